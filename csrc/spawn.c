/*
 * uidprobe engine: fork the probe children, watch their deadlines, kill and
 * reap them (up_run_batch).  See api.h for the contract.
 *
 * Children run concurrently: a window of up to UP_WINDOW children is forked
 * back to back, then collected.  Each has its own record area in one shared
 * mapping, its own deadline (counted from its own fork) and its own kill;
 * every child forked is reaped before up_run_batch() returns.
 *
 * Rules for everything reachable from child_main(): only async-signal-safe
 * calls (the step runner in steps.c: set*id/get*id, raw system calls,
 * _exit) and plain stores into a shared mapping.  No malloc, no stdio, no
 * Python: the caller may have had other threads holding locks at fork time,
 * and the child inherits those locks held forever.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 // pipe2()
#endif

#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

// How long the parent sleeps in poll() before checking with waitpid() which
// children are gone.  EOF on the pipe (every child has exited) is the normal
// signal, but another thread that forks at the wrong moment can inherit the
// write end and delay EOF.
#define UP_POLL_SLICE_MS 20

long long up_batch_budget_ms(int nscenarios, int timeout_ms)
{
    long long windows = nscenarios <= 0 ? 1 : (nscenarios + UP_WINDOW - 1) / UP_WINDOW;
    return windows * (long long)timeout_ms;
}

long long up_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int up_pipe_cloexec(int fds[2])
{
#ifdef __linux__
    return pipe2(fds, O_CLOEXEC);
#else
    if (pipe(fds) != 0)
        return -1;
    // Not atomic with pipe(); a concurrent fork+exec elsewhere may inherit the
    // fds.  The waitpid() polling copes with that.
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
#endif
}

void up_fail(struct up_outcome *out, const char *call, int err)
{
    out->error = err;
    out->failed_call = call;
}

static void close_once(int fd)
{
    // Never retry close() on EINTR (Linux releases the fd anyway).
    (void)close(fd);
}

int up_fd_limit(void)
{
    long n = sysconf(_SC_OPEN_MAX);
    return n > 0 && n < 0x7fffffff ? (int)n : 0x10000;
}

void up_close_fds(int lo, int hi, int limit)
{
    if (hi >= 0 && hi < lo)
        return;
#if defined(__linux__) && defined(SYS_close_range)
    if (syscall(SYS_close_range, (unsigned)lo, hi < 0 ? ~0U : (unsigned)hi, 0) == 0)
        return;
#endif
    // No close_range (Linux before 5.9, other systems): one close per number.
    for (int fd = lo; fd <= (hi < 0 ? limit - 1 : hi); fd++)
        (void)close(fd);
}

int up_die_with_parent(int parent)
{
#ifdef __linux__
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        return -1;
#endif
    // The parent may have died before the setting took: then it never fires.
    return getppid() == parent ? 0 : -1;
}

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

// What a child is given besides its steps and record area.
struct child_ctx {
    int parent;   // the forking process's pid
    int keep_fd;  // the pipe's write end: closed when the child exits
    int fd_limit; // where closing stops without close_range (read before fork)
};

// The child dies with its parent, or ends now if the parent is gone.
static void die_with_parent(const struct child_ctx *c)
{
    if (up_die_with_parent(c->parent) != 0)
        _exit(UP_ORPHAN_EXIT);
}

// The whole life of the child.  Never returns.  Its only link to the parent
// besides `sh` is the pipe's write end, which closes when it exits; every
// other descriptor (the caller's, the runner's stdin and stdout) is closed.
//
// A change of effective or filesystem ids or of capabilities clears
// PR_SET_PDEATHSIG, so it is set again after every step (prctl is a plain
// system call): a child outlives its parent by one step at most, and the
// supervisor above (a subreaper) catches that one.
__attribute__((noreturn)) static void child_main(const struct up_step *steps, int nsteps, struct up_shared *sh,
                                                 const struct child_ctx *c)
{
    die_with_parent(c);
    up_close_fds(0, c->keep_fd - 1, c->fd_limit);
    up_close_fds(c->keep_fd + 1, -1, c->fd_limit);
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
        die_with_parent(c);
    }
    __sync_synchronize();
    sh->completed = 1;
    _exit(0);
}

// --------------------------------------------------------------- parent side

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

// Non-blocking check for a child's end.  Returns 1 when it is gone (its
// status noted when we could collect it), 0 while it still runs.
//
// The engine only ever sends SIGKILL, at the deadline, so a stop or a
// continue seen here came from outside: another process of the child's
// real or saved uid (kill(2) allows it) or a tracer.  Both are noted for
// the caller to judge; a stopped child is killed at once (it would sit
// until its deadline and pass for a hang) and reaped on a later call.
static int child_gone(pid_t pid, struct up_outcome *out)
{
    int status;
    pid_t r;
    do
        r = waitpid(pid, &status, WNOHANG | WUNTRACED | WCONTINUED);
    while (r < 0 && errno == EINTR);
    if (r == pid && WIFSTOPPED(status)) {
        out->stopped = WSTOPSIG(status);
        kill(pid, SIGKILL);
        return 0;
    }
    if (r == pid && WIFCONTINUED(status)) {
        out->continued = 1;
        return 0;
    }
    if (r == pid) {
        note_status(out, status);
        return 1;
    }
    if (r < 0) {
        // ECHILD: SIGCHLD is ignored (the kernel reaped it) or the
        // application's own handler did.  Gone, status unknown.
        out->wait_errno = errno;
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

// The children of one window, as the parent follows them.
struct window {
    int n;
    pid_t pid[UP_WINDOW];       // -1: never started (fork failed)
    long long deadline[UP_WINDOW];
    int live[UP_WINDOW];        // started and not yet reaped
    struct up_outcome *out;     // n outcomes
};

// Kill a child whose deadline has passed, unless it is already gone (only
// a child we have not reaped is signalled: its pid is still ours), and reap it.
static void end_overdue(struct window *w, int i)
{
    if (!child_gone(w->pid[i], &w->out[i])) {
        kill(w->pid[i], SIGKILL);
        w->out[i].timed_out = 1;
        reap(w->pid[i], &w->out[i]);
    }
    w->live[i] = 0;
}

// Wait for every child of the window: EOF on `rd` (every child has exited),
// a deadline, or the periodic waitpid() check, whichever comes first.
static void collect(struct window *w, int rd)
{
    int eof = 0;
    for (;;) {
        long long now = up_now_ms(), next = -1;
        int live = 0;
        for (int i = 0; i < w->n; i++) {
            if (!w->live[i])
                continue;
            if (w->deadline[i] <= now) {
                end_overdue(w, i);
                continue;
            }
            live++;
            if (next < 0 || w->deadline[i] < next)
                next = w->deadline[i];
        }
        if (live == 0)
            return;
        if (eof) {
            // Every write end is closed: every child is past exit (or the
            // pipe was inherited and closed elsewhere).  Reap what remains.
            for (int i = 0; i < w->n; i++)
                if (w->live[i]) {
                    reap(w->pid[i], &w->out[i]);
                    w->live[i] = 0;
                }
            return;
        }
        long long left = next - now;
        struct pollfd p = {.fd = rd, .events = POLLIN};
        int r = poll(&p, 1, left < UP_POLL_SLICE_MS ? (int)left : UP_POLL_SLICE_MS);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            for (int i = 0; i < w->n; i++)
                if (w->live[i]) {
                    up_fail(&w->out[i], "poll", e);
                    w->deadline[i] = now; // killed and reaped on the next pass
                }
            continue;
        }
        if (r > 0) {
            eof = 1; // the children write nothing: readable means EOF
            continue;
        }
        for (int i = 0; i < w->n; i++)
            if (w->live[i] && child_gone(w->pid[i], &w->out[i]))
                w->live[i] = 0;
    }
}

// fork(), and where it is refused for lack of resources (EAGAIN under a pids
// limit, ENOMEM) while children of this window are still running, wait for
// them (they end within a millisecond, or at their deadline) and try once
// more: a limit that leaves room for one child at a time still gets every
// probe run.  A limit that leaves room for none still fails, with the errno.
static pid_t fork_when_room(struct window *w, int started)
{
    pid_t pid = fork();
    if (pid >= 0 || (errno != EAGAIN && errno != ENOMEM))
        return pid;
    int e = errno, waited = 0;
    for (int j = 0; j < started; j++) {
        while (w->live[j]) {
            waited = 1;
            if (w->deadline[j] <= up_now_ms())
                end_overdue(w, j);
            else if (child_gone(w->pid[j], &w->out[j]))
                w->live[j] = 0;
            else
                (void)poll(NULL, 0, 1);
        }
    }
    if (!waited) {
        errno = e;
        return -1;
    }
    return fork();
}

// Fork the window's children back to back, then collect them all.
static void run_window(struct up_shared *sh, const struct up_step *steps, const int *counts, int n,
                       int timeout_ms, struct up_outcome *out)
{
    struct window w = {.n = n, .out = out};
    int fds[2];
    sigset_t all, old;
    struct child_ctx c = {.parent = (int)getpid(), .fd_limit = up_fd_limit()};

    if (up_pipe_cloexec(fds) != 0) {
        int e = errno;
        for (int i = 0; i < n; i++)
            up_fail(&out[i], "pipe", e);
        return;
    }
    c.keep_fd = fds[1];
    // The children must never run a signal handler of the caller's
    // (Python's handler writes to the application's wakeup fd).  Fork with
    // every signal blocked and leave them blocked in the children; SIGKILL
    // still ends them, and a genuine crash is delivered regardless of the mask.
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    const struct up_step *s = steps;
    for (int i = 0; i < n; i++) {
        sh[i].count = 0;
        sh[i].completed = 0;
        pid_t pid = fork_when_room(&w, i);
        if (pid == 0) {
            child_main(s, counts[i], &sh[i], &c);
        }
        w.pid[i] = pid;
        w.live[i] = pid > 0;
        if (pid < 0)
            up_fail(&out[i], "fork", errno); // EAGAIN from a pids limit, ENOMEM: the others still run
        else
            w.deadline[i] = up_now_ms() + timeout_ms;
        s += counts[i];
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close_once(fds[1]);
    collect(&w, fds[0]);
    close_once(fds[0]);
}

static void copy_records(const struct up_shared *sh, int nsteps, struct up_record *records,
                         struct up_outcome *out)
{
    // Reaping orders the child's stores before our loads.
    __sync_synchronize();
    int n = sh->count;
    if (n < 0 || n > nsteps)
        n = 0; // cannot happen unless the child scribbled: trust nothing
    for (int i = 0; i < n; i++)
        records[out->nrecords++] = sh->records[i];
    out->completed = sh->completed && n == nsteps;
}

// The runner reuses its record mapping from chunk to chunk of its batch
// (up_keep_shared): mapping and unmapping it, and the children faulting in
// fresh zeroed pages, cost a tenth of a small chunk.  Every child that could write to it is
// reaped before up_run_batch() returns, so reuse is safe.  Never in the
// caller's process: its own later fork()s would inherit the mapping.
static struct {
    int enabled;
    struct up_shared *area;
    size_t size;
} reused;

void up_keep_shared(void)
{
    reused.enabled = 1;
}

static struct up_shared *shared_area(size_t size)
{
    if (reused.enabled && reused.area != NULL && reused.size >= size)
        return reused.area;
    if (reused.enabled)
        size = (size_t)UP_WINDOW * sizeof(struct up_shared); // map the largest once
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (reused.enabled) {
        reused.area = p;
        reused.size = size;
    }
    return p;
}

int up_run_batch(const struct up_step *steps, const int *counts, int nscenarios,
                 struct up_record *records, struct up_outcome *outcomes,
                 int timeout_ms)
{
    for (int i = 0; i < nscenarios; i++)
        memset(&outcomes[i], 0, sizeof outcomes[i]);
    if (nscenarios <= 0)
        return 0;
    for (int i = 0; i < nscenarios; i++)
        if (counts[i] < 0 || counts[i] > UP_MAX_STEPS || timeout_ms <= 0) {
            up_fail(&outcomes[i], "up_run_batch", EINVAL);
            return -1;
        }
    // One mapping for a window of children: mmap per child would double
    // the cost of small probes.
    int window = nscenarios < UP_WINDOW ? nscenarios : UP_WINDOW;
    size_t size = (size_t)window * sizeof(struct up_shared);
    struct up_shared *sh = shared_area(size);
    if (sh == NULL) {
        up_fail(&outcomes[0], "mmap", errno);
        return -1;
    }
    const struct up_step *s = steps;
    int rc = 0;
    for (int done = 0; done < nscenarios; done += window) {
        int n = nscenarios - done < window ? nscenarios - done : window;
        run_window(sh, s, counts + done, n, timeout_ms, outcomes + done);
        for (int i = 0; i < n; i++) {
            struct up_outcome *o = &outcomes[done + i];
            if (o->error)
                rc = -1;
            else
                copy_records(&sh[i], counts[done + i], records + (size_t)(done + i) * UP_MAX_STEPS, o);
            s += counts[done + i];
        }
    }
    if (sh != reused.area)
        munmap(sh, size);
    return rc;
}
