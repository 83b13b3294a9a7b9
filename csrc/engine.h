/*
 * uidprobe engine: run a list of set*id steps in a forked child and return
 * the trace.  The engine is deliberately meaning-free: it performs calls and
 * reads ids back.  What a trace *means* is decided in Python.
 */
#ifndef UIDPROBE_ENGINE_H
#define UIDPROBE_ENGINE_H

#include <stddef.h>

// Operations a step can perform.  The numbering is part of the ABI between
// this file and src/uidprobe/engine.py; append, never renumber.
#define UP_OP_SETUID 1
#define UP_OP_SETEUID 2
#define UP_OP_SETREUID 3
#define UP_OP_SETRESUID 4
#define UP_OP_SETGID 5
#define UP_OP_SETEGID 6
#define UP_OP_SETREGID 7
#define UP_OP_SETRESGID 8
#define UP_OP_SETGROUPS 9

#define UP_MAX_ARGS 8
#define UP_MAX_GROUPS 8
#define UP_MAX_STEPS 64

// An id the child could not read back (no getresuid on this platform).
#define UP_ID_UNKNOWN (-2LL)

// Feature bits returned by up_features(), detected when the engine was built.
#define UP_HAVE_GETRESUID 1
#define UP_HAVE_SETRESUID 2
#define UP_HAVE_GETRESGID 4
#define UP_HAVE_SETRESGID 8

struct up_step {
    int op;
    int nargs;                   // setgroups: the number of groups in args
    long long args[UP_MAX_ARGS]; // -1 means "leave unchanged" where the call allows it
};

struct up_record {
    int index;                   // step index
    int op;
    int ret;                     // the call's return value
    int err;                     // errno when ret == -1, else 0
    long long uid[3];            // real, effective, saved as read back after the step
    long long gid[3];
    int ngroups;                 // getgroups() count after the step, -1 if it failed
    long long groups[UP_MAX_GROUPS]; // the first UP_MAX_GROUPS of them
};

struct up_outcome {
    int nrecords;        // records stored in the caller's array
    int completed;       // the child ran every step and marked the trace complete
    int timed_out;       // the parent killed the child after the deadline
    int exited;          // exit status known and the child exited ...
    int exit_code;       // ... with this code
    int signaled;        // exit status known and the child died of ...
    int signal;          // ... this signal
    int wait_errno;      // waitpid() failed (ECHILD when SIGCHLD is ignored or
                         // another reaper took the child): status unknown
    int error;           // errno of a parent-side failure; 0 if none
    const char *failed_call; // name of the call that failed, or NULL
};

// Run `nscenarios` step lists back to back, each in a child forked from this
// process; the child is killed after timeout_ms.  Scenario i has
// counts[i] steps, taken in order from `steps`; its records start at
// records + i * UP_MAX_STEPS.  Stops at the first parent-side failure and
// returns -1; otherwise returns 0.
int up_run_batch(const struct up_step *steps, const int *counts, int nscenarios,
                 struct up_record *records, struct up_outcome *outcomes,
                 int timeout_ms);

int up_features(void);

// ------------------------------------------------------------ the runner

// Wire format between up_spawn_batch() and the runner program (runner.c):
// both are built from this header by the same compiler, so raw structs.
#define UP_BATCH_MAGIC 0x75696470 // "uidp"

struct up_batch_header {
    int magic;
    int nscenarios;
    int total_steps;
    int timeout_ms;
};

// up_run_batch() in a separate small process: posix_spawn `runner` (its
// cost does not grow with the caller's memory, unlike fork), send it the
// steps, read back the outcomes and records.  Same layout of `records` and
// `outcomes` as up_run_batch().  Returns 0 when every scenario ran; -1 with
// outcomes[0].error/failed_call set when the runner could not be started or
// failed (the caller may then fall back to up_run_batch()).
// I/O helpers shared with the runner (not part of the Python-facing API):
// write all of buf, and read exactly len bytes (timeout_ms < 0: no deadline).
// Both retry EINTR and short transfers; -1 with errno on failure or EOF.
int up_write_all(int fd, const void *buf, size_t len);
int up_read_exact(int fd, void *buf, size_t len, int timeout_ms);

int up_spawn_batch(const char *runner,
                   const struct up_step *steps, const int *counts, int nscenarios,
                   struct up_record *records, struct up_outcome *outcomes,
                   int timeout_ms);

#endif
