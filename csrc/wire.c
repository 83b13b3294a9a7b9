/*
 * uidprobe engine: the runner's wire format and I/O (up_spawn_batch).  See
 * api.h for the contract and engine.h for the format.
 *
 * up_spawn_batch() posix_spawn()s the runner program (runner.c), writes it
 * the header, the counts and the steps, and reads back each scenario's
 * outcome and records.  The runner forks the children (spawn.c).
 *
 * up_runner_*() keep one runner for many batches (api.h says when it ends).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

static void close_once(int fd)
{
    // Never retry close() on EINTR (Linux releases the fd anyway).
    (void)close(fd);
}

extern char **environ;

int up_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int up_iov_advance(struct iovec **iov, int n, size_t written)
{
    while (n > 0 && written >= (*iov)->iov_len) {
        written -= (*iov)->iov_len;
        (*iov)++;
        n--;
    }
    if (n > 0) {
        (*iov)->iov_base = (char *)(*iov)->iov_base + written;
        (*iov)->iov_len -= written;
    }
    return n;
}

static int spawn_runner(char *const argv[], pid_t *pid, int *to, int *from, int socket_in);

// up_read_exact(), also telling how many bytes came (*got) before a failure.
static int read_counted(int fd, void *buf, size_t len, int timeout_ms, size_t *got)
{
    *got = 0;
    char *p = buf;
    long long deadline = timeout_ms < 0 ? -1 : up_now_ms() + timeout_ms;
    while (len > 0) {
        int wait = -1;
        if (deadline >= 0) {
            long long left = deadline - up_now_ms();
            if (left <= 0) {
                errno = ETIMEDOUT;
                return -1;
            }
            wait = left > 1000000 ? 1000000 : (int)left;
        }
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, wait);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            continue;
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            errno = EPIPE;
        if (n <= 0)
            return -1;
        p += n;
        *got += (size_t)n;
        len -= (size_t)n;
    }
    return 0;
}

int up_read_exact(int fd, void *buf, size_t len, int timeout_ms)
{
    size_t got;
    return read_counted(fd, buf, len, timeout_ms, &got);
}

int up_wire_abi(char *buf, int len)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    const char *order = "big";
#else
    const char *order = "little";
#endif
    int n = snprintf(buf, (size_t)len, "uidprobe-wire/%d %d %s header=%zu step=%zu record=%zu outcome=%zu",
                     UP_WIRE_VERSION, (int)(sizeof(void *) * 8), order, sizeof(struct up_batch_header),
                     sizeof(struct up_step), sizeof(struct up_record), sizeof(struct up_outcome));
    return n < 0 || n >= len ? -1 : n;
}

// Read a runner's announcement: one line, at most UP_WIRE_ABI_MAX bytes,
// into buf without its newline.  0, or an errno (EPIPE: it ended before
// announcing; EPROTO: no line, or more than one).
static int read_announcement(int fd, char buf[UP_WIRE_ABI_MAX], int timeout_ms)
{
    size_t have = 0;
    long long deadline = up_now_ms() + timeout_ms;
    while (have < UP_WIRE_ABI_MAX - 1) {
        long long left = deadline - up_now_ms();
        if (left <= 0)
            return ETIMEDOUT;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, left > 1000000 ? 1000000 : (int)left);
        if (r < 0 && errno != EINTR)
            return errno;
        if (r <= 0)
            continue;
        // The runner writes its line and then waits for the request: the
        // line is all there is to read.
        ssize_t n = read(fd, buf + have, UP_WIRE_ABI_MAX - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return EPIPE;
        have += (size_t)n;
        char *nl = memchr(buf, '\n', have);
        if (nl != NULL) {
            *nl = '\0';
            return nl == buf + have - 1 ? 0 : EPROTO;
        }
    }
    return EPROTO;
}

int up_runner_abi(const char *runner, char *buf, int len, int timeout_ms)
{
    if (len < 1 || timeout_ms <= 0)
        return EINVAL;
    buf[0] = '\0';
    char *argv[] = {(char *)runner, NULL};
    pid_t pid;
    int to, from;
    int err = spawn_runner(argv, &pid, &to, &from, 0);
    if (err != 0)
        return err;
    close_once(to); // no request: after its announcement it reads EOF and exits
    char line[UP_WIRE_ABI_MAX];
    err = read_announcement(from, line, timeout_ms);
    close_once(from);
    if (err != 0)
        kill(pid, SIGKILL); // our unreaped child: the pid is still ours
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (err == 0)
        snprintf(buf, (size_t)len, "%s", line);
    return err;
}

// posix_spawn `argv[0]` with its stdin and stdout on two new pipes; our ends
// (FD_CLOEXEC) in *to and *from.  0 or an errno.
static int spawn_runner(char *const argv[], pid_t *pid, int *to, int *from, int socket_in)
{
    int in[2], out[2];
#ifdef __linux__
    // A kept runner's requests travel on a Unix socket, which carries the
    // sender's credentials, checked by the kernel (see up_hello.proof).
    if (socket_in ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0 : up_pipe_cloexec(in) != 0)
        return errno;
#else
    if (socket_in)
        return ENOSYS;
    if (up_pipe_cloexec(in) != 0)
        return errno;
#endif
    if (up_pipe_cloexec(out) != 0) {
        int e = errno;
        close_once(in[0]);
        close_once(in[1]);
        return e;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[socket_in ? 1 : 0], 0); // dup2 clears FD_CLOEXEC
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    int err = posix_spawn(pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close_once(in[socket_in ? 1 : 0]);
    close_once(out[1]);
    if (err != 0) {
        close_once(in[socket_in ? 0 : 1]);
        close_once(out[0]);
        return err;
    }
    *to = in[socket_in ? 0 : 1];
    *from = out[0];
    return 0;
}

// Send one request.  0, or an errno (EPIPE: the runner had ended).
// SIGPIPE is not our business: a runner that died shows up as EPIPE here.
static int send_batch(int fd, const struct up_step *steps, const int *counts, int nscenarios, int total,
                      int timeout_ms)
{
    struct up_batch_header h = {UP_BATCH_MAGIC, nscenarios, total, timeout_ms};
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    int werr = 0;
    if (up_write_all(fd, &h, sizeof h) != 0 ||
        up_write_all(fd, counts, (size_t)nscenarios * sizeof *counts) != 0 ||
        up_write_all(fd, steps, (size_t)total * sizeof *steps) != 0)
        werr = errno;
    if (werr == EPIPE) {
        // Consume the SIGPIPE we caused, so it is not delivered on unblock.
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return werr;
}

// Scenarios from..n-1 got no reply: each says why (not only the first, or
// the rest would read as children that ended without a record).
static void fail_from(struct up_outcome *outcomes, int from, int n, const char *call, int err)
{
    for (int i = from; i < n; i++) {
        memset(&outcomes[i], 0, sizeof outcomes[i]);
        up_fail(&outcomes[i], call, err);
    }
}

// Read one reply.  0; UP_RUNNER_GONE when not one byte came (EOF at once);
// -1 with the outcome of every scenario not received saying why.
static int receive(int fd, const int *counts, int nscenarios, struct up_record *records,
                   struct up_outcome *outcomes, int timeout_ms, int slack_ms)
{
    // Every child is killed at its own deadline by the runner; this bound
    // only guards against a runner that is itself stuck (or stopped).
    long long budget = up_batch_budget_ms(nscenarios, timeout_ms) + slack_ms;
    int limit = budget > 0x7fffffff ? 0x7fffffff : (int)budget;
    for (int i = 0; i < nscenarios; i++) {
        struct up_outcome *o = &outcomes[i];
        size_t got;
        if (read_counted(fd, o, sizeof *o, limit, &got) != 0) {
            int e = errno;
            memset(o, 0, sizeof *o);
            if (i == 0 && e == EPIPE && got == 0)
                return UP_RUNNER_GONE; // EOF before any reply: it had ended
            fail_from(outcomes, i, nscenarios, "runner", e);
            return -1;
        }
        // A child the runner could not fork is that scenario's outcome.
        o->failed_call = o->error ? "fork (in the runner)" : NULL;
        if (o->nrecords < 0 || o->nrecords > counts[i] ||
            up_read_exact(fd, records + (size_t)i * UP_MAX_STEPS, (size_t)o->nrecords * sizeof *records, limit) != 0) {
            int e = errno ? errno : EPROTO;
            fail_from(outcomes, i, nscenarios, "runner", e);
            return -1;
        }
    }
    return 0;
}

// Clear the outcomes and check the counts; the total step count, or -1
// with outcomes[0] (or the bad scenario's outcome) saying why.
static long long check_batch(const int *counts, int nscenarios, struct up_outcome *outcomes, int timeout_ms,
                             const char *who)
{
    long long total = 0;
    for (int i = 0; i < nscenarios; i++) {
        memset(&outcomes[i], 0, sizeof outcomes[i]);
        if (counts[i] < 0 || counts[i] > UP_MAX_STEPS) {
            up_fail(&outcomes[i], who, EINVAL);
            return -1;
        }
        total += counts[i];
    }
    if (nscenarios > 0 && (timeout_ms <= 0 || total > 0x7fffffff)) {
        up_fail(&outcomes[0], who, EINVAL);
        return -1;
    }
    return total;
}

int up_spawn_batch(const char *runner,
                   const struct up_step *steps, const int *counts, int nscenarios,
                   struct up_record *records, struct up_outcome *outcomes,
                   int timeout_ms)
{
    long long total = check_batch(counts, nscenarios, outcomes, timeout_ms, "up_spawn_batch");
    if (total < 0)
        return -1;
    if (nscenarios <= 0)
        return 0;
    char *argv[] = {(char *)runner, NULL};
    pid_t pid;
    int to, from;
    int err = spawn_runner(argv, &pid, &to, &from, 0);
    if (err != 0) {
        up_fail(&outcomes[0], "posix_spawn", err);
        return -1;
    }
    // The runner announces its wire format first; nothing is sent to one
    // built for another (its structs would be misread on both sides, and
    // its children would run garbled steps).
    char line[UP_WIRE_ABI_MAX], mine[UP_WIRE_ABI_MAX];
    int rc = 0, werr = read_announcement(from, line, UP_RUNNER_SLACK_MS + timeout_ms);
    if (werr != 0) {
        fail_from(outcomes, 0, nscenarios, "runner", werr);
        rc = -1;
    } else if (up_wire_abi(mine, sizeof mine) < 0 || strcmp(line, mine) != 0) {
        fail_from(outcomes, 0, nscenarios, "runner", EPROTO);
        rc = UP_RUNNER_FOREIGN;
    } else if ((werr = send_batch(to, steps, counts, nscenarios, (int)total, timeout_ms)) != 0) {
        // The runner reads all of its input before writing anything, so
        // writing everything first cannot deadlock.
        fail_from(outcomes, 0, nscenarios, "write to runner", werr);
        rc = -1;
    }
    close_once(to); // a runner not sent the request reads EOF and exits
    if (rc == 0 && receive(from, counts, nscenarios, records, outcomes, timeout_ms, 2 * UP_RUNNER_SLACK_MS) != 0) {
        if (!outcomes[0].error)
            fail_from(outcomes, 0, nscenarios, "runner", EPIPE);
        rc = -1;
    }
    close_once(from);
    if (rc != 0)
        kill(pid, SIGKILL); // our unreaped child: the pid is still ours
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return rc;
}

// ------------------------------------------------------------ a kept runner

void up_read_context(struct up_context *c)
{
    memset(c, 0, sizeof *c);
    up_read_creds(&c->creds, UP_READ_CAPS);
#ifdef __linux__
    c->no_new_privs = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    c->seccomp = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
    struct stat st;
    if (stat("/proc/thread-self/ns/user", &st) == 0) {
        c->userns_dev = (unsigned long long)st.st_dev;
        c->userns_ino = (unsigned long long)st.st_ino;
    }
#endif
}

// CAP_SETUID and CAP_SETGID in the thread's effective set: what claiming a
// runner's proof needs.
static int holds_setid_caps(const struct up_creds *c)
{
    unsigned long long need = 1ULL << 7 | 1ULL << 6; // CAP_SETUID, CAP_SETGID
    return c->caps_known && (c->cap_eff & need) == need;
}

// Could this thread give the proof a runner started by it would demand
// (runner.c could_be_privileged)?  exec gives a runner with uid 0 among its
// real and effective ids every capability the bounding set allows; one
// that will hold any capability or root id demands the proof, which needs
// CAP_SETUID and CAP_SETGID in this thread's effective set.
static int can_prove(const struct up_creds *c)
{
    if (holds_setid_caps(c))
        return 1;
    int root = c->uid[0] == 0 || c->uid[1] == 0;
    return !root && c->caps_known && (c->cap_eff | c->cap_prm | c->cap_amb) == 0;
}

// Does a runner that reports `runner` hold the ids of a thread whose
// credentials are `caller`?  exec made its saved ids its effective ones and
// recomputed its capabilities, so real and effective ids, filesystem ids
// and groups are what must be equal.
static int holds_ids_of(const struct up_creds *runner, const struct up_creds *caller)
{
    if (runner->ngroups != caller->ngroups || runner->ngroups < 0)
        return 0;
    int n = runner->ngroups < UP_SWITCH_MAX_GROUPS ? runner->ngroups : UP_SWITCH_MAX_GROUPS;
    for (int i = 0; i < n; i++)
        if (runner->groups[i] != caller->groups[i])
            return 0;
    return runner->uid[0] == caller->uid[0] && runner->uid[1] == caller->uid[1] &&
           runner->gid[0] == caller->gid[0] && runner->gid[1] == caller->gid[1] &&
           runner->fsuid == caller->fsuid && runner->fsgid == caller->fsgid;
}

static void runner_reset(struct up_runner *r)
{
    r->pid = -1;
    r->to = r->from = r->pidfd = -1;
    r->owner = 0;
}

static int open_pidfd(pid_t pid)
{
#if defined(__linux__) && defined(SYS_pidfd_open)
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    return -1;
#endif
}

static void kill_by_pidfd(int pidfd)
{
#if defined(__linux__) && defined(SYS_pidfd_send_signal)
    if (pidfd >= 0)
        (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
#else
    (void)pidfd;
#endif
}

// Send the whole request on a kept runner's socket, every piece with the
// credentials that prove this thread's privilege (proof != 0), within
// deadline (up_now_ms()).  0, or an errno: EPIPE it had ended, ETIMEDOUT
// it does not read (stopped, stuck), EPERM/EINVAL this thread cannot make
// the claim.
static int send_proven(int fd, struct iovec *iov, int n, unsigned proof, long long deadline, size_t *sent)
{
    *sent = 0;
#ifdef __linux__
    union {
        char buf[CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    while (n > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        if (proof != 0) {
            memset(&control, 0, sizeof control);
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof control.buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_CREDENTIALS;
            c->cmsg_len = CMSG_LEN(sizeof(struct ucred));
            struct ucred uc = {.pid = getpid(), .uid = (uid_t)proof, .gid = (gid_t)proof};
            memcpy(CMSG_DATA(c), &uc, sizeof uc);
        }
        ssize_t w = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            long long left = deadline - up_now_ms();
            if (left <= 0)
                return ETIMEDOUT;
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            (void)poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
            continue;
        }
        if (w < 0)
            return errno;
        *sent += (size_t)w;
        n = up_iov_advance(&iov, n, (size_t)w);
    }
    return 0;
#else
    (void)fd, (void)iov, (void)n, (void)proof, (void)deadline, (void)sent;
    return ENOSYS;
#endif
}

// Wait up to `ms` for our child `pid` to exit, then kill it; reap it.
static void reap_within(pid_t pid, int ms)
{
    long long deadline = up_now_ms() + ms;
    int status;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            return;
        if (w == 0 && up_now_ms() >= deadline) {
            kill(pid, SIGKILL); // our unreaped child: the pid is still ours; works on a stopped one
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            return;
        }
        (void)poll(NULL, 0, 1);
    }
}

int up_runner_start(const char *path, int idle_ms, struct up_runner *r)
{
    runner_reset(r);
    if (idle_ms <= 0)
        return EINVAL;
#ifdef __linux__
    // Orphans are reparented to init, or to the nearest subreaper: where
    // that is this process (PID 1 of a container, a service manager), the
    // detached runner would come back as a child nobody reaps.
    int subreaper = 0;
    if (getpid() == 1 || (prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0) == 0 && subreaper))
        return ECHILD;
#else
    (void)path;
    return ENOSYS; // the proof needs SCM_CREDENTIALS
#endif
    char idle[16];
    int k = (int)sizeof idle - 1;
    idle[k] = '\0';
    do
        idle[--k] = (char)('0' + idle_ms % 10);
    while ((idle_ms /= 10) > 0 && k > 0);
    char *argv[] = {(char *)path, "serve", idle + k, NULL};
    // The runner holds the credentials this thread has when posix_spawn
    // clones it.  Another thread may change them (a process-wide switch,
    // a permanent drop) at any moment, so the context is read before and
    // after, and the runner says which ids it holds: all three must agree.
    struct up_context before;
    up_read_context(&before);
    if (!can_prove(&before.creds))
        return EPERM; // the runner would demand a proof this thread cannot give: do not start one
    pid_t first;
    int err = spawn_runner(argv, &first, &r->to, &r->from, 1);
    if (err != 0)
        return err;
    // The first process forks the server and exits at once.  Bounded
    // waits only: it, or the server, may have been stopped by a user who
    // may signal it (the one a switched caller became).
    struct up_hello hello;
    int herr = up_read_exact(r->from, &hello, sizeof hello, UP_RUNNER_SLACK_MS) != 0 ? (errno ? errno : EPROTO) : 0;
    reap_within(first, herr ? 0 : 200);
    if (herr != 0 || hello.magic != UP_BATCH_MAGIC || hello.pid <= 0) {
        up_runner_close(r); // the server, if any, sees EOF and ends
        if (herr == 0)
            return EPROTO;
        return herr == EPIPE ? ENOEXEC : herr; // EOF: an old runner without "serve", or it failed
    }
    r->pid = hello.pid;
    r->proof = hello.proof;
    // The server holds the write end of `from` until it exits, so while the
    // pipe shows no hang-up its pid cannot have been reused: open the pidfd
    // first, then check.
    r->pidfd = open_pidfd(r->pid);
    struct pollfd p = {.fd = r->from, .events = POLLIN};
    if (poll(&p, 1, 0) != 0) {
        up_runner_close(r); // ended already (or wrote unasked): not ours to use
        return EPROTO;
    }
    if (r->pidfd >= 0)
        (void)fcntl(r->pidfd, F_SETFD, FD_CLOEXEC);
    up_read_context(&r->ctx);
    if (memcmp(&before, &r->ctx, sizeof before) != 0 || !holds_ids_of(&hello.creds, &r->ctx.creds)) {
        kill_by_pidfd(r->pidfd);
        up_runner_close(r);
        return EAGAIN; // started across an identity change: this batch spawns its own
    }
    // The runner's own word on whether it demands the proof (can_prove only
    // predicted it): without the capabilities every request would be refused.
    if (r->proof != 0 && !holds_setid_caps(&r->ctx.creds)) {
        up_runner_close(r);
        return EPERM;
    }
    r->owner = (int)getpid();
    return 0;
}

int up_runner_fits(const struct up_runner *r)
{
    if (r->to < 0 || r->owner != (int)getpid())
        return 0;
    struct up_context now;
    up_read_context(&now);
    return memcmp(&now, &r->ctx, sizeof now) == 0;
}

int up_runner_batch(struct up_runner *r,
                    const struct up_step *steps, const int *counts, int nscenarios,
                    struct up_record *records, struct up_outcome *outcomes,
                    int timeout_ms)
{
    long long total = check_batch(counts, nscenarios, outcomes, timeout_ms, "up_runner_batch");
    if (total < 0)
        return -1;
    if (nscenarios <= 0)
        return 0;
    if (r->to < 0) {
        up_fail(&outcomes[0], "up_runner_batch", EBADF);
        return -1;
    }
    struct up_batch_header h = {UP_BATCH_MAGIC, nscenarios, (int)total, timeout_ms};
    struct iovec iov[3] = {
        {&h, sizeof h},
        {(void *)counts, (size_t)nscenarios * sizeof *counts},
        {(void *)steps, (size_t)total * sizeof *steps},
    };
    long long deadline = up_now_ms() + up_batch_budget_ms(nscenarios, timeout_ms) + UP_RUNNER_SLACK_MS;
    size_t sent = 0;
    int werr = send_proven(r->to, iov, 3, r->proof, deadline, &sent);
    if (werr == EPIPE || werr == ECONNRESET)
        return UP_RUNNER_GONE;
    if ((werr == EPERM || werr == EINVAL) && sent == 0)
        return UP_RUNNER_UNPROVEN;
    if (werr) {
        up_fail(&outcomes[0], "send to runner", werr);
        kill_by_pidfd(r->pidfd);
        return -1;
    }
    int rc = receive(r->from, counts, nscenarios, records, outcomes, timeout_ms, UP_RUNNER_SLACK_MS);
    if (rc < 0)
        kill_by_pidfd(r->pidfd); // stuck or garbled: it will not be asked again
    return rc;
}

void up_runner_close(struct up_runner *r)
{
    if (r->to >= 0)
        close_once(r->to);
    if (r->from >= 0)
        close_once(r->from);
    if (r->pidfd >= 0)
        close_once(r->pidfd);
    runner_reset(r);
}
