/*
 * uidprobe engine: run a list of set*id steps in a forked child and return
 * the trace.  The engine is deliberately meaning-free: it performs calls and
 * reads ids back.  What a trace *means* is decided in Python.
 *
 * The interface Python calls is declared once, in api.h (the build script
 * reads it into the cffi cdef).  This header adds what the C files share
 * among themselves:
 *   steps.c   the async-signal-safe step runner (probe children and up_switch)
 *   spawn.c   fork, deadline, kill, reap: up_run_batch()
 *   wire.c    the runner's wire format and I/O helpers: up_spawn_batch()
 *   runner.c  the small program that forks probe children
 */
#ifndef UIDPROBE_ENGINE_H
#define UIDPROBE_ENGINE_H

#include <stddef.h>

#include "api.h"

// How many probe children run at once (spawn.c): a batch is forked a window
// at a time, then the window is collected.
#define UP_WINDOW 64

// --------------------------------------------------------- steps.c

// Perform one step; its return value, errno set.  `pool` holds the groups
// of UP_GROUPS_FROM_POOL setgroups steps (or NULL).
int up_do_step(const struct up_step *s, const long long *pool, int npool);
// Fill r's ids, kernel ids, filesystem ids, capabilities and groups, and
// the sibling thread's ids when one runs.
void up_read_record(struct up_record *r);

// ------------------------------------------------------------ wire.c

// Wire format between up_spawn_batch() and the runner program (runner.c):
// raw structs, so both must be built from this header for the same ABI.
// The runner's first words are a line of text saying which (up_wire_abi in
// api.h), and the engine sends nothing to a runner whose line differs from
// its own.  UP_WIRE_VERSION changes whenever a struct's meaning does.
#define UP_WIRE_VERSION 1
#define UP_BATCH_MAGIC 0x75696470 // "uidp"

struct up_batch_header {
    int magic;
    int nscenarios;
    int total_steps;
    int timeout_ms;
};

// I/O helpers shared with the runner: write all of buf, and read exactly
// len bytes (timeout_ms < 0: no deadline).  Both retry EINTR and short
// transfers; -1 with errno on failure or EOF.
int up_write_all(int fd, const void *buf, size_t len);
// After a gathered write of `written` bytes: skip the iovecs it finished
// and trim the one it stopped in.  Returns how many remain from *iov on.
struct iovec;
int up_iov_advance(struct iovec **iov, int n, size_t written);
int up_read_exact(int fd, void *buf, size_t len, int timeout_ms);

// ------------------------------------------------------------ spawn.c

// How long the runner's answer may take beyond its children's deadlines
// (the caller then kills it).
#define UP_RUNNER_SLACK_MS 1000
// The longest a batch's children can take: each window of UP_WINDOW runs
// concurrently, its children killed at their own deadlines.
long long up_batch_budget_ms(int nscenarios, int timeout_ms);

// Milliseconds on the monotonic clock.
long long up_now_ms(void);
// pipe() with FD_CLOEXEC on both ends.
int up_pipe_cloexec(int fds[2]);
// Keep up_run_batch()'s shared record mapping between calls (the runner
// only: see spawn.c).
void up_keep_shared(void);
// Close every descriptor from lo to hi (hi < 0: every one from lo up);
// `limit` bounds the loop where close_range is missing (up_fd_limit(),
// read before fork: sysconf is not async-signal-safe).  Async-signal-safe.
void up_close_fds(int lo, int hi, int limit);
int up_fd_limit(void);
// PR_SET_PDEATHSIG(SIGKILL), then check that the parent is still `parent`
// (it may have died first).  0, or -1: end now.  Async-signal-safe.
int up_die_with_parent(int parent);
// A probe child's exit status when its parent had died.
#define UP_ORPHAN_EXIT 126
// Record a parent-side failure in `out`.
void up_fail(struct up_outcome *out, const char *call, int err);

#endif
