/*
 * uidprobe-runner: the engine in a small process of its own.
 *
 * Forking costs in proportion to the caller's address space (page tables):
 * about 11 ms for a 1 GB Python process against ~0.1 ms for a small one.  So
 * the caller posix_spawn()s this program (vfork-style: no copy of its
 * memory), sends the step lists on stdin, and this process forks the probe
 * children.  The children are the engine's usual ones: they run only
 * async-signal-safe calls.  It serves exactly one batch, then exits: nothing
 * privileged outlives the call that started it.
 *
 *   _runner PARENT_PID      PARENT_PID: the caller's pid, checked at once
 *
 * Before anything else it closes every descriptor but 0, 1 and 2 (whatever
 * the caller left open without FD_CLOEXEC is not its business), and asks
 * to be killed when its parent dies (PR_SET_PDEATHSIG), then checks that
 * the parent is still PARENT_PID (it may have died before the request).
 * SIGCHLD gets its default action: a caller that ignores it passes SIG_IGN
 * on across exec, and the kernel would then reap the probe children, so
 * that how each ended (killed from outside, or finished) were lost.
 *
 * stdin:  struct up_batch_header, int counts[n], struct up_step steps[total]
 * stdout: first the wire format's announcement, one line of text
 *         (up_wire_abi in api.h), before reading anything; then for each
 *         scenario, struct up_outcome then `nrecords` records
 * exit:   0 all ran; 1 bad input; 2 a child could not be started (the
 *         outcome of that scenario carries the errno; the rest still ran);
 *         3 output failed; 6 the parent had died
 */
#include "engine.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

// Scenarios run per chunk (up_run_batch runs a chunk concurrently), so memory
// stays small whatever the batch size.
#define CHUNK UP_WINDOW

// The request's buffers: the chunk's records are allocated once (not zeroed:
// only what the children wrote is sent), whatever the number of chunks.
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
        n = up_iov_advance(&iov, n, (size_t)w);
    }
    return 0;
}

// Read exactly len bytes of the request.  0, or -1 on EOF or error.
static int read_request(void *buf, size_t len)
{
    return up_read_exact(0, buf, len, -1) == 0 ? 0 : -1;
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
    if (read_request(counts, (size_t)h->nscenarios * sizeof *counts) != 0 ||
        read_request(b->steps, (size_t)h->total_steps * sizeof *b->steps) != 0)
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

// The caller's pid from argv, or -1.
static long parse_pid(const char *text)
{
    char *end;
    errno = 0;
    long pid = strtol(text, &end, 10);
    return errno == 0 && end != text && *end == '\0' && pid > 0 ? pid : -1;
}

int main(int argc, char **argv)
{
    // First, before anything is read or written: no descriptor of the
    // caller's but the three it gave, and no life beyond the caller's.
    up_close_fds(3, -1, up_fd_limit());
    long parent = argc == 2 ? parse_pid(argv[1]) : -1;
    if (parent < 0)
        return 1;
    if (up_die_with_parent((int)parent) != 0)
        return 6;
    signal(SIGCHLD, SIG_DFL); // the children's statuses are this process's evidence
    // Which wire format this build speaks, before anything is read: the
    // caller sends nothing to a runner built for another ABI.
    char line[UP_WIRE_ABI_MAX];
    int n = up_wire_abi(line, (int)sizeof line - 1);
    if (n < 0)
        return 3;
    line[n++] = '\n';
    if (up_write_all(1, line, (size_t)n) != 0)
        return 3;
    struct up_batch_header h;
    if (up_read_exact(0, &h, sizeof h, -1) != 0)
        return 1;
    struct buffers b = {0};
    up_keep_shared(); // one record mapping for every chunk of this batch
    int failed = 0, status = answer(&h, &b, &failed);
    return status != 0 ? status : failed ? 2 : 0;
}
