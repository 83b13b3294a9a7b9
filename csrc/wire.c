/*
 * uidprobe engine: the runner's wire format and I/O (up_spawn_batch).  See
 * api.h for the contract and engine.h for the format.
 *
 * up_spawn_batch() posix_spawn()s the runner program (runner.c), writes it
 * the header, the counts and the steps, and reads back each scenario's
 * outcome and records.  The runner forks the children (spawn.c); one
 * runner serves one batch.
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
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

int up_read_exact(int fd, void *buf, size_t len, int timeout_ms)
{
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
        len -= (size_t)n;
    }
    return 0;
}

// posix_spawn `argv[0]` with its stdin and stdout on two new pipes; our ends
// (FD_CLOEXEC) in *to and *from.  0 or an errno.
static int spawn_runner(char *const argv[], pid_t *pid, int *to, int *from)
{
    int in[2], out[2];
    if (up_pipe_cloexec(in) != 0)
        return errno;
    if (up_pipe_cloexec(out) != 0) {
        int e = errno;
        close_once(in[0]);
        close_once(in[1]);
        return e;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0); // dup2 clears FD_CLOEXEC
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    int err = posix_spawn(pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close_once(in[0]);
    close_once(out[1]);
    if (err != 0) {
        close_once(in[1]);
        close_once(out[0]);
        return err;
    }
    *to = in[1];
    *from = out[0];
    return 0;
}

// The runner's argv: its path and this process's pid, which it checks is
// its parent's (see runner.c).  `parent` holds the digits.
static void runner_argv(const char *runner, char parent[24], char *argv[3])
{
    int k = 23;
    parent[k] = '\0';
    long p = (long)getpid();
    do
        parent[--k] = (char)('0' + p % 10);
    while ((p /= 10) > 0 && k > 0);
    argv[0] = (char *)runner;
    argv[1] = parent + k;
    argv[2] = NULL;
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
    char parent[24], *argv[3];
    runner_argv(runner, parent, argv);
    pid_t pid;
    int to, from;
    int err = spawn_runner(argv, &pid, &to, &from);
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

// Read one reply.  0, or -1 with the outcome of every scenario not received
// saying why.
static int receive(int fd, const int *counts, int nscenarios, struct up_record *records,
                   struct up_outcome *outcomes, int timeout_ms, int slack_ms)
{
    // Every child is killed at its own deadline by the runner; this bound
    // only guards against a runner that is itself stuck (or stopped).
    long long budget = up_batch_budget_ms(nscenarios, timeout_ms) + slack_ms;
    int limit = budget > 0x7fffffff ? 0x7fffffff : (int)budget;
    for (int i = 0; i < nscenarios; i++) {
        struct up_outcome *o = &outcomes[i];
        if (up_read_exact(fd, o, sizeof *o, limit) != 0) {
            fail_from(outcomes, i, nscenarios, "runner", errno);
            return -1;
        }
        // A child the runner could not fork is that scenario's outcome.
        o->failed_call = o->error ? "fork (in the runner)" : NULL;
        if (o->nrecords < 0 || o->nrecords > counts[i] ||
            up_read_exact(fd, records + (size_t)i * UP_MAX_STEPS, (size_t)o->nrecords * sizeof *records, limit) != 0) {
            fail_from(outcomes, i, nscenarios, "runner", errno ? errno : EPROTO);
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
    // The runner checks that its parent is this process (see runner.c).
    char parent[24], *argv[3];
    runner_argv(runner, parent, argv);
    pid_t pid;
    int to, from;
    int err = spawn_runner(argv, &pid, &to, &from);
    if (err != 0) {
        fail_from(outcomes, 0, nscenarios, "posix_spawn", err);
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
    if (rc == 0 && receive(from, counts, nscenarios, records, outcomes, timeout_ms, 2 * UP_RUNNER_SLACK_MS) != 0)
        rc = -1;
    close_once(from);
    if (rc != 0)
        kill(pid, SIGKILL); // our unreaped child: the pid is still ours
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return rc;
}
