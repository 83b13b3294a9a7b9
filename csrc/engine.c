/*
 * uidprobe engine.  See engine.h for the contract.
 *
 * Build-time macros (set by the build script after a compile-and-link test):
 *   HAVE_GETRESUID HAVE_SETRESUID HAVE_GETRESGID HAVE_SETRESGID
 *
 * Rules for everything reachable from child_main(): only async-signal-safe
 * calls (the step runner in steps.c: set*id/get*id, capget, _exit) and plain
 * stores into a shared mapping.  No malloc, no stdio, no Python: the caller
 * may have had other threads holding locks at fork time, and the child
 * inherits those locks held forever.  Steps go through the C library: its
 * behaviour is what callers of seteuid() get, so that is what we measure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 // getresuid() and friends on glibc
#endif

#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// How long the parent sleeps in poll() before checking with waitpid() whether
// the child is gone.  EOF on the pipe is the normal signal, but another thread
// that forks at the wrong moment can inherit the write end and delay EOF.
#define UP_POLL_SLICE_MS 20

// ---------------------------------------------------------------- child side

// Records live in a MAP_SHARED anonymous mapping: the child stores them with
// plain memory writes (no syscall, no wake-up of the parent per step) and
// they survive the child crashing half-way.  `count` is bumped only after a
// record is complete, so the parent never reads a half-written one.
struct up_shared {
    volatile int count;
    volatile int completed;
    struct up_record records[UP_MAX_STEPS];
};

static void clear_record(struct up_record *r)
{
    // A plain loop, not memset: keep the child's call list obvious.
    unsigned char *p = (unsigned char *)r;
    for (size_t i = 0; i < sizeof *r; i++)
        p[i] = 0;
}

// The whole life of the child.  Never returns.  Its only link to the parent
// besides `sh` is the pipe's write end, which closes when it exits.
static void child_main(const struct up_step *steps, int nsteps, struct up_shared *sh)
{
    for (int i = 0; i < nsteps; i++) {
        struct up_record *rec = &sh->records[i];
        clear_record(rec);
        rec->index = i;
        rec->op = steps[i].op;
        errno = 0;
        rec->ret = up_do_step(&steps[i], NULL, 0);
        rec->err = rec->ret == -1 ? errno : 0;
        up_read_record(rec);
        __sync_synchronize();
        sh->count = i + 1;
    }
    __sync_synchronize();
    sh->completed = 1;
    _exit(0);
}

// --------------------------------------------------------------- parent side

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int pipe_cloexec(int fds[2])
{
#ifdef __linux__
    return pipe2(fds, O_CLOEXEC);
#else
    if (pipe(fds) != 0)
        return -1;
    // Not atomic with pipe(); a concurrent fork+exec elsewhere may inherit the
    // fds.  The END marker and the waitpid() polling cope with that.
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
#endif
}

static void close_retry(int fd)
{
    // Never retry close() on EINTR (Linux releases the fd anyway).
    (void)close(fd);
}

static void fail(struct up_outcome *out, const char *call, int err)
{
    out->error = err;
    out->failed_call = call;
}

static void note_status(struct up_outcome *out, int status)
{
    if (WIFEXITED(status)) {
        out->exited = 1;
        out->exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        out->signaled = 1;
        out->signal = WTERMSIG(status);
    }
}

// Non-blocking check for the child's end.  Returns 1 when it is gone (its
// status noted when we could collect it), 0 while it still runs.
static int child_gone(pid_t pid, struct up_outcome *out, int *reaped)
{
    int status;
    pid_t r;
    do
        r = waitpid(pid, &status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == pid) {
        note_status(out, status);
        *reaped = 1;
        return 1;
    }
    if (r < 0) {
        // ECHILD: SIGCHLD is ignored (the kernel reaped it) or the
        // application's own handler did.  Gone, status unknown.
        out->wait_errno = errno;
        *reaped = 1;
        return 1;
    }
    return 0;
}

// Blocking reap; retries EINTR.
static void reap(pid_t pid, struct up_outcome *out)
{
    int status;
    pid_t r;
    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    if (r == pid)
        note_status(out, status);
    else
        out->wait_errno = errno;
}

// Fork one child for `steps`, wait for it (at most timeout_ms), reap it.
static int run_one(struct up_shared *sh, const struct up_step *steps, int nsteps,
                   int timeout_ms, struct up_outcome *out)
{
    int fds[2];
    sigset_t all, old;
    pid_t pid;
    int reaped = 0;

    sh->count = 0;
    sh->completed = 0;
    if (pipe_cloexec(fds) != 0) {
        fail(out, "pipe", errno);
        return -1;
    }
    // The child must never run a signal handler of the caller's (Python's
    // handler writes to the application's wakeup fd).  Fork with every
    // signal blocked and leave them blocked in the child; SIGKILL still ends
    // it, and a genuine crash is delivered regardless of the mask.
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = fork();
    if (pid == 0) {
        close_retry(fds[0]);
        child_main(steps, nsteps, sh);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close_retry(fds[1]);
    if (pid < 0) {
        close_retry(fds[0]);
        fail(out, "fork", fork_errno);
        return -1;
    }

    // Wait for EOF on the pipe: the child has exited.  Poll in slices so that
    // a write end inherited by some other process (a thread of the caller
    // forking at the wrong moment) cannot stall us past the child's exit.
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            // Only signal a child we have not reaped: its pid is still ours.
            if (!child_gone(pid, out, &reaped)) {
                kill(pid, SIGKILL);
                out->timed_out = 1;
            }
            break;
        }
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        int r = poll(&p, 1, left < UP_POLL_SLICE_MS ? (int)left : UP_POLL_SLICE_MS);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fail(out, "poll", errno);
            if (!child_gone(pid, out, &reaped))
                kill(pid, SIGKILL);
            break;
        }
        if (r > 0)
            break; // EOF (the child writes nothing): it has exited
        if (child_gone(pid, out, &reaped))
            break;
    }
    close_retry(fds[0]);
    if (!reaped)
        reap(pid, out);

    // Reaping orders the child's stores before our loads.
    __sync_synchronize();
    int n = sh->count;
    if (n < 0 || n > nsteps)
        n = 0; // cannot happen unless the child scribbled: trust nothing
    out->completed = sh->completed && n == nsteps;
    return out->error ? -1 : 0;
}

static struct up_shared *map_shared(struct up_outcome *out)
{
    void *p = mmap(NULL, sizeof(struct up_shared), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fail(out, "mmap", errno);
        return NULL;
    }
    return p;
}

static void copy_records(const struct up_shared *sh, int nsteps,
                         struct up_record *records, int maxrecords,
                         struct up_outcome *out)
{
    int n = sh->count;
    if (n < 0 || n > nsteps)
        n = 0;
    for (int i = 0; i < n && i < maxrecords; i++)
        records[out->nrecords++] = sh->records[i];
}

int up_run_batch(const struct up_step *steps, const int *counts, int nscenarios,
                 struct up_record *records, struct up_outcome *outcomes,
                 int timeout_ms)
{
    const struct up_step *s = steps;
    int rc = 0;
    for (int i = 0; i < nscenarios; i++)
        memset(&outcomes[i], 0, sizeof outcomes[i]);
    if (nscenarios <= 0)
        return 0;
    // One mapping for the whole batch: mmap per child would double the cost
    // of small probes.
    struct up_shared *sh = map_shared(&outcomes[0]);
    if (sh == NULL)
        return -1;
    for (int i = 0; i < nscenarios; i++) {
        if (counts[i] < 0 || counts[i] > UP_MAX_STEPS || timeout_ms <= 0) {
            fail(&outcomes[i], "up_run_batch", EINVAL);
            rc = -1;
            break;
        }
        // A failed fork (EAGAIN from a pids limit, ENOMEM) is that
        // scenario's outcome; the others are still tried.
        if (run_one(sh, s, counts[i], timeout_ms, &outcomes[i]) != 0)
            rc = -1;
        else
            copy_records(sh, counts[i], records + (size_t)i * UP_MAX_STEPS, UP_MAX_STEPS,
                         &outcomes[i]);
        s += counts[i];
    }
    munmap(sh, sizeof *sh);
    return rc;
}

// ---------------------------------------------------------- spawned runner

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

int up_read_exact(int fd, void *buf, size_t len, int timeout_ms)
{
    char *p = buf;
    long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    while (len > 0) {
        int wait = -1;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
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

int up_spawn_batch(const char *runner,
                   const struct up_step *steps, const int *counts, int nscenarios,
                   struct up_record *records, struct up_outcome *outcomes,
                   int timeout_ms)
{
    int in[2], out[2];
    long long total = 0;
    for (int i = 0; i < nscenarios; i++) {
        memset(&outcomes[i], 0, sizeof outcomes[i]);
        if (counts[i] < 0 || counts[i] > UP_MAX_STEPS) {
            fail(&outcomes[i], "up_spawn_batch", EINVAL);
            return -1;
        }
        total += counts[i];
    }
    if (nscenarios <= 0)
        return 0;
    if (timeout_ms <= 0 || total > 0x7fffffff) {
        fail(&outcomes[0], "up_spawn_batch", EINVAL);
        return -1;
    }
    if (pipe_cloexec(in) != 0) {
        fail(&outcomes[0], "pipe", errno);
        return -1;
    }
    if (pipe_cloexec(out) != 0) {
        fail(&outcomes[0], "pipe", errno);
        close_retry(in[0]);
        close_retry(in[1]);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);  // dup2 clears FD_CLOEXEC
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    char *argv[] = {(char *)runner, NULL};
    pid_t pid;
    int err = posix_spawn(&pid, runner, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close_retry(in[0]);
    close_retry(out[1]);
    if (err != 0) {
        close_retry(in[1]);
        close_retry(out[0]);
        fail(&outcomes[0], "posix_spawn", err);
        return -1;
    }

    // The runner reads all of its input before writing anything, so writing
    // everything first cannot deadlock.  SIGPIPE is not our business: a
    // runner that died early shows up as EPIPE here.
    struct up_batch_header h = {UP_BATCH_MAGIC, nscenarios, (int)total, timeout_ms};
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    int werr = 0;
    if (up_write_all(in[1], &h, sizeof h) != 0 ||
        up_write_all(in[1], counts, (size_t)nscenarios * sizeof *counts) != 0 ||
        up_write_all(in[1], steps, (size_t)total * sizeof *steps) != 0)
        werr = errno;
    close_retry(in[1]);
    if (werr == EPIPE) {
        // Consume the SIGPIPE we caused, so it is not delivered on unblock.
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    // Every child is killed at its own deadline by the runner; this bound
    // only guards against a runner that is itself stuck.
    long long budget = (long long)timeout_ms * (nscenarios + 1) + 5000;
    int limit = budget > 0x7fffffff ? 0x7fffffff : (int)budget;
    int rc = 0;
    for (int i = 0; i < nscenarios && rc == 0 && werr == 0; i++) {
        struct up_outcome *o = &outcomes[i];
        if (up_read_exact(out[0], o, sizeof *o, limit) != 0) {
            int e = errno;
            memset(o, 0, sizeof *o);
            fail(o, "runner", e);
            rc = -1;
            break;
        }
        // A child the runner could not fork is that scenario's outcome.
        o->failed_call = o->error ? "fork (in the runner)" : NULL;
        if (o->nrecords < 0 || o->nrecords > counts[i] ||
            up_read_exact(out[0], records + (size_t)i * UP_MAX_STEPS,
                          (size_t)o->nrecords * sizeof *records, limit) != 0) {
            int e = errno ? errno : EPROTO;
            memset(o, 0, sizeof *o);
            fail(o, "runner", e);
            rc = -1;
        }
    }
    if (werr) {
        fail(&outcomes[0], "write to runner", werr);
        rc = -1;
    }
    close_retry(out[0]);
    if (rc != 0)
        kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return rc;
}

int up_features(void)
{
    int f = 0;
#ifdef HAVE_GETRESUID
    f |= UP_HAVE_GETRESUID;
#endif
#ifdef HAVE_SETRESUID
    f |= UP_HAVE_SETRESUID;
#endif
#ifdef HAVE_GETRESGID
    f |= UP_HAVE_GETRESGID;
#endif
#ifdef HAVE_SETRESGID
    f |= UP_HAVE_SETRESGID;
#endif
    return f;
}
