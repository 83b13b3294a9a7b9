/*
 * uidprobe engine: the runner's wire format and I/O (up_spawn_batch).  See
 * api.h for the contract and engine.h for the format.
 *
 * up_spawn_batch() posix_spawn()s the runner program (runner.c), writes it
 * the header, the counts and the steps, and reads back each scenario's
 * outcome and records.  The runner forks the children (spawn.c).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "engine.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/types.h>
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
            up_fail(&outcomes[i], "up_spawn_batch", EINVAL);
            return -1;
        }
        total += counts[i];
    }
    if (nscenarios <= 0)
        return 0;
    if (timeout_ms <= 0 || total > 0x7fffffff) {
        up_fail(&outcomes[0], "up_spawn_batch", EINVAL);
        return -1;
    }
    if (up_pipe_cloexec(in) != 0) {
        up_fail(&outcomes[0], "pipe", errno);
        return -1;
    }
    if (up_pipe_cloexec(out) != 0) {
        up_fail(&outcomes[0], "pipe", errno);
        close_once(in[0]);
        close_once(in[1]);
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
    close_once(in[0]);
    close_once(out[1]);
    if (err != 0) {
        close_once(in[1]);
        close_once(out[0]);
        up_fail(&outcomes[0], "posix_spawn", err);
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
    close_once(in[1]);
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
            up_fail(o, "runner", e);
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
            up_fail(o, "runner", e);
            rc = -1;
        }
    }
    if (werr) {
        up_fail(&outcomes[0], "write to runner", werr);
        rc = -1;
    }
    close_once(out[0]);
    if (rc != 0)
        kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return rc;
}
