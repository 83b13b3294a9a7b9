/*
 * uidprobe-runner: the engine in a small process of its own.
 *
 * Forking costs in proportion to the caller's address space (page tables):
 * about 11 ms for a 1 GB Python process against ~0.1 ms for a small one.  So
 * the caller posix_spawn()s this program (vfork-style: no copy of its
 * memory), sends the step lists on stdin, and this process forks the probe
 * children.  The children are the engine's usual ones: they run only
 * async-signal-safe calls.
 *
 *   _runner                  one request, then exit
 *   _runner serve IDLE_MS TID
 *                            detach (fork; the first process exits at once),
 *                            say hello, then answer requests until EOF or
 *                            IDLE_MS without one (the kept runner of api.h);
 *                            each request names the asking thread, which
 *                            must hold this process's ids (/proc says), and
 *                            so must thread TID that started it
 *
 * stdin:  per request: struct up_batch_header, int counts[n],
 *         struct up_step steps[total]
 * stdout: serve: first a struct up_hello (this pid, its credentials, and
 *         whether thread TID holds its ids; it exits unless it does);
 *         per request: for each scenario, struct up_outcome then `nrecords`
 *         records
 * exit:   0 all ran (serve: EOF or idle); 1 bad input; 2 a child could not
 *         be started (the outcome of that scenario carries the errno; the
 *         rest still ran; one-shot only); 3 output failed, or thread TID
 *         does not hold this process's ids; 4 could not detach; 5 a request
 *         from a thread that does not; killed by SIGALRM: a request that
 *         did not complete in time
 */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

// Scenarios run per chunk (up_run_batch runs a chunk concurrently), so memory
// stays small whatever the batch size.
#define CHUNK UP_WINDOW

// Buffers kept from one request to the next: allocating (and zeroing) a
// chunk's records afresh each time costs more than forking the children.
struct buffers {
    int *counts;
    size_t ncounts;
    struct up_step *steps;
    size_t nsteps;
    struct up_record *records; // CHUNK * UP_MAX_STEPS; only what the children wrote is sent
    struct up_outcome *outcomes;
};

// Grow *p to hold n items of `size` (contents not kept).  0 or -1.
static int reserve(void **p, size_t *have, size_t n, size_t size)
{
    if (n <= *have)
        return 0;
    free(*p);
    *p = malloc(n * size);
    *have = *p ? n : 0;
    return *p ? 0 : -1;
}

// writev() all of iov, resuming after short writes (a reply larger than
// the pipe's buffer) and EINTR.  0 or -1.
static int write_gathered(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

// Answer one request whose header is `h`.  0, or the exit status.
static int answer(const struct up_batch_header *h, struct buffers *b, int *forks_failed)
{
    if (h->magic != UP_BATCH_MAGIC || h->nscenarios < 0 || h->total_steps < 0 || h->timeout_ms <= 0)
        return 1;
    if (!b->records)
        b->records = malloc((size_t)CHUNK * UP_MAX_STEPS * sizeof *b->records);
    if (!b->outcomes)
        b->outcomes = malloc(CHUNK * sizeof *b->outcomes);
    if (!b->records || !b->outcomes ||
        reserve((void **)&b->counts, &b->ncounts, (size_t)h->nscenarios + 1, sizeof *b->counts) != 0 ||
        reserve((void **)&b->steps, &b->nsteps, (size_t)h->total_steps + 1, sizeof *b->steps) != 0)
        return 1;
    int *counts = b->counts;
    if (up_read_exact(0, counts, (size_t)h->nscenarios * sizeof *counts, -1) != 0 ||
        up_read_exact(0, b->steps, (size_t)h->total_steps * sizeof *b->steps, -1) != 0)
        return 1;
    long long sum = 0;
    for (int i = 0; i < h->nscenarios; i++) {
        if (counts[i] < 0 || counts[i] > UP_MAX_STEPS)
            return 1;
        sum += counts[i];
    }
    if (sum != h->total_steps)
        return 1;

    const struct up_step *s = b->steps;
    for (int done = 0; done < h->nscenarios; done += CHUNK) {
        int n = h->nscenarios - done < CHUNK ? h->nscenarios - done : CHUNK;
        if (up_run_batch(s, counts + done, n, b->records, b->outcomes, h->timeout_ms) != 0)
            *forks_failed = 1;
        // The chunk's reply in one gathered write: one wake-up of the
        // caller instead of two per scenario.
        struct iovec iov[2 * CHUNK];
        for (int i = 0; i < n; i++) {
            struct up_outcome *o = &b->outcomes[i];
            o->failed_call = NULL; // a pointer means nothing in the caller's process
            iov[2 * i] = (struct iovec){o, sizeof *o};
            iov[2 * i + 1] = (struct iovec){b->records + (size_t)i * UP_MAX_STEPS, (size_t)o->nrecords * sizeof *b->records};
            s += counts[done + i];
        }
        if (write_gathered(1, iov, 2 * n) != 0)
            return 3;
    }
    return 0;
}

// Parse "Name:\t1\t2\t3\t4" in a /proc status text into up to `max` numbers.
// The count found, or -1 when the line is missing.
static int status_numbers(const char *text, const char *name, long long *out, int max)
{
    size_t len = strlen(name);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, len) != 0 || line[len] != ':')
            continue;
        const char *p = line + len + 1;
        int n = 0;
        while (n < max) {
            while (*p == ' ' || *p == '\t')
                p++;
            if (*p < '0' || *p > '9')
                break;
            char *end;
            out[n++] = strtoll(p, &end, 10);
            p = end;
        }
        return n;
    }
    return -1;
}

// Does thread `tid` of process `caller` hold this runner's ids: real,
// effective and filesystem uid and gid, and the same groups?  Read from
// /proc, the kernel's own account.  1 yes, 0 no, -1 cannot tell.
static int caller_holds_my_ids(pid_t caller, int tid)
{
    if (tid <= 0)
        return 0;
    char path[64], text[8192];
    snprintf(path, sizeof path, "/proc/%d/task/%d/status", (int)caller, tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1; // no such thread of the caller: not one we serve
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = '\0';
    struct up_creds me;
    up_read_creds(&me, 0);
    long long uid[4], gid[4], groups[UP_SWITCH_MAX_GROUPS];
    if (status_numbers(text, "Uid", uid, 4) != 4 || status_numbers(text, "Gid", gid, 4) != 4)
        return -1;
    int ng = status_numbers(text, "Groups", groups, UP_SWITCH_MAX_GROUPS);
    if (ng < 0 || me.ngroups < 0 || me.ngroups > UP_SWITCH_MAX_GROUPS)
        return -1;
    if (uid[0] != me.uid[0] || uid[1] != me.uid[1] || uid[3] != me.fsuid || gid[0] != me.gid[0] ||
        gid[1] != me.gid[1] || gid[3] != me.fsgid || ng != me.ngroups)
        return 0;
    for (int i = 0; i < ng; i++) { // the same set (both as the kernel lists them, but do not rely on it)
        int found = 0;
        for (int j = 0; j < me.ngroups && !found; j++)
            found = groups[i] == me.groups[j];
        if (!found)
            return 0;
    }
    return 1;
}

// Seconds for alarm(): at least one, at most an hour.
static unsigned seconds(long long ms)
{
    long long s = ms / 1000 + 1;
    return (unsigned)(s > 3600 ? 3600 : s);
}

static int serve(int idle_ms, int tid)
{
    pid_t caller = getppid();
    pid_t pid = fork();
    if (pid < 0)
        return 4;
    if (pid > 0)
        _exit(0); // the caller reaps this one; the server below is not its child
    // A watchdog for each request: a caller that sends half a request, or
    // never reads the answer, must not keep this process (it may hold root)
    // alive.  SIGALRM's default action ends it; the caller may have had it
    // ignored or blocked, which exec and posix_spawn pass on.
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    signal(SIGALRM, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);

    struct up_hello hello = {.magic = UP_BATCH_MAGIC, .pid = (int)getpid()};
    up_read_creds(&hello.creds, UP_READ_CAPS);
    // Say whether the thread that started us can be checked, and holds our
    // ids (it may have been switched while we started): the caller decides.
    hello.verified = caller_holds_my_ids(caller, tid);
    struct buffers b = {0};
    up_keep_shared();
    if (up_write_all(1, &hello, sizeof hello) != 0 || hello.verified != 1)
        return 3;
    for (;;) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        int r = poll(&p, 1, idle_ms);
        if (r == 0)
            return 0; // idle: end, so no root process outlives its use
        if (r < 0)
            continue; // EINTR
        alarm(seconds(idle_ms));
        struct up_batch_header h;
        if (up_read_exact(0, &h, sizeof h, -1) != 0)
            return 0; // EOF: the caller closed its end, exec'd or died
        // Serve only a thread of the caller that still holds our ids: one
        // that dropped or switched them (its own setuid, not uidprobe's)
        // must not have a process with the old ones run probes for it.
        if (caller_holds_my_ids(caller, h.tid) != 1)
            return 5;
        if (h.nscenarios >= 0 && h.timeout_ms > 0)
            alarm(seconds(up_batch_budget_ms(h.nscenarios, h.timeout_ms) + UP_RUNNER_SLACK_MS));
        int failed = 0, status = answer(&h, &b, &failed);
        alarm(0);
        if (status != 0)
            return status;
    }
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "serve") == 0) {
        int idle_ms = atoi(argv[2]), tid = atoi(argv[3]);
        return idle_ms > 0 && tid > 0 ? serve(idle_ms, tid) : 1;
    }
    if (argc != 1)
        return 1;
    struct up_batch_header h;
    if (up_read_exact(0, &h, sizeof h, -1) != 0)
        return 1;
    struct buffers b = {0};
    int failed = 0, status = answer(&h, &b, &failed);
    return status != 0 ? status : failed ? 2 : 0;
}
