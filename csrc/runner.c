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
 *   _runner serve IDLE_MS    detach (fork; the first process exits at once),
 *                            say hello, then answer requests on the Unix
 *                            socket that is stdin until EOF or IDLE_MS
 *                            without one (the kept runner of api.h); while
 *                            it holds CAP_SETUID/CAP_SETGID, only requests
 *                            whose every piece proves the sender holds them
 *                            (up_hello.proof in engine.h)
 *
 * stdin:  per request: struct up_batch_header, int counts[n],
 *         struct up_step steps[total]
 * stdout: one-shot: first the wire format's announcement, one line of text
 *         (up_wire_abi in api.h), before reading anything;
 *         serve: first a struct up_hello (this pid, its credentials, the
 *         proof requests must carry);
 *         per request: for each scenario, struct up_outcome then `nrecords`
 *         records
 * exit:   0 all ran (serve: EOF or idle); 1 bad input; 2 a child could not
 *         be started (the outcome of that scenario carries the errno; the
 *         rest still ran; one-shot only); 3 output failed; 4 could not
 *         detach; 5 a request without the proof; killed by SIGALRM: a
 *         request that did not complete in time
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 // struct ucred
#endif

#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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
        n = up_iov_advance(&iov, n, (size_t)w);
    }
    return 0;
}

// How a request is read: from a pipe (one-shot), or from the kept
// runner's socket where every piece must carry the proof.
struct source {
    int serving;
    unsigned proof;
};

// Read exactly len bytes of a request.  0; -1 EOF or error; -2 a piece
// came without the proof (see up_hello in engine.h).
static int read_request(const struct source *src, void *buf, size_t len)
{
    if (!src->serving)
        return up_read_exact(0, buf, len, -1) == 0 ? 0 : -1;
    char *p = buf;
    while (len > 0) {
        union {
            char buf[CMSG_SPACE(sizeof(struct ucred))];
            struct cmsghdr align;
        } control;
        struct iovec iov = {p, len};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t n = recvmsg(0, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        if (src->proof != 0) {
            // The kernel attaches the sender's credentials to every piece
            // (SO_PASSCRED) and never joins pieces sent with different ones.
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            struct ucred uc;
            if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_CREDENTIALS ||
                c->cmsg_len != CMSG_LEN(sizeof uc))
                return -2;
            memcpy(&uc, CMSG_DATA(c), sizeof uc);
            if (uc.uid != (uid_t)src->proof || uc.gid != (gid_t)src->proof)
                return -2;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

// Answer one request whose header is `h`.  0, or the exit status.
static int answer(const struct up_batch_header *h, const struct source *src, struct buffers *b, int *forks_failed)
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
    int r = read_request(src, counts, (size_t)h->nscenarios * sizeof *counts);
    if (r == 0)
        r = read_request(src, b->steps, (size_t)h->total_steps * sizeof *b->steps);
    if (r != 0)
        return r == -2 ? 5 : 1;
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

// Seconds for alarm(): at least one, at most an hour.
static unsigned seconds(long long ms)
{
    long long s = ms / 1000 + 1;
    return (unsigned)(s > 3600 ? 3600 : s);
}

// The id every request must claim (see up_hello in engine.h): one in the
// upper half of the id space, none of this process's own.  Its secrecy is
// not what protects (the kernel refuses the claim to a sender without the
// capabilities); random only so that it is nobody's id.
static unsigned pick_proof(const struct up_creds *me)
{
    unsigned v = 0;
#ifdef SYS_getrandom
    if (syscall(SYS_getrandom, &v, sizeof v, 0) != (long)sizeof v)
        v = 0;
#endif
    if (v == 0)
        v = (unsigned)getpid() * 2654435761u ^ (unsigned)up_now_ms();
    v = 0x80000000u | (v & 0x7ffffff0u);
    for (int i = 0; i < 3; i++)
        if ((long long)v == me->uid[i] || (long long)v == me->gid[i])
            v += 1; // (cannot wrap: the low bits were cleared)
    return v;
}

// Could this process, or a child of it, act with privilege?  Any
// capability in its effective or permitted set, or uid 0 among its ids
// (a caller switched to another effective uid keeps real or saved uid 0,
// and setresuid(0, 0, 0) brings every capability back).
static int could_be_privileged(const struct up_creds *me)
{
    if (!me->caps_known || (me->cap_eff | me->cap_prm) != 0)
        return 1;
    for (int i = 0; i < 3; i++)
        if (me->uid[i] == 0)
            return 1;
    return 0;
}

static int serve(int idle_ms)
{
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
    struct source src = {.serving = 1};
    // Could be privileged: demand, with every request, the proof that the
    // sender holds CAP_SETUID and CAP_SETGID.  A sender that does can
    // become any user anyway; one that does not gets nothing from here.
    if (could_be_privileged(&hello.creds))
        src.proof = hello.proof = pick_proof(&hello.creds);
    int one = 1;
    if (setsockopt(0, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0)
        return 1; // stdin is not the caller's socket
    struct buffers b = {0};
    up_keep_shared();
    if (up_write_all(1, &hello, sizeof hello) != 0)
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
        r = read_request(&src, &h, sizeof h);
        if (r == -1)
            return 0; // EOF: the caller closed its end, exec'd or died
        if (r == -2)
            return 5; // not from a sender that holds the privilege this process does
        if (h.nscenarios >= 0 && h.timeout_ms > 0)
            alarm(seconds(up_batch_budget_ms(h.nscenarios, h.timeout_ms) + UP_RUNNER_SLACK_MS));
        int failed = 0, status = answer(&h, &src, &b, &failed);
        alarm(0);
        if (status != 0)
            return status;
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "serve") == 0) {
        int idle_ms = atoi(argv[2]);
        return idle_ms > 0 ? serve(idle_ms) : 1;
    }
    if (argc != 1)
        return 1;
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
    struct source src = {.serving = 0};
    int failed = 0, status = answer(&h, &src, &b, &failed);
    return status != 0 ? status : failed ? 2 : 0;
}
