/*
 * The Python-facing interface of the uidprobe engine: the one declaration of
 * it.  engine.h includes this file; src/build_engine.py reads it into the
 * cffi cdef, so it must stay parseable by cffi:
 *   - no #include, no #if; the include guard lines are stripped,
 *   - `#define NAME value` lines (the value becomes `...` in the cdef),
 *   - array bounds named by such a macro (`args[UP_MAX_ARGS]`) become `[...]`,
 *   - plain structs and prototypes; comments are fine.
 */
#ifndef UIDPROBE_API_H
#define UIDPROBE_API_H

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
// Capability and prctl steps (Linux; EINVAL elsewhere).  They make the
// permanent drop complete and let the regain check try what an attacker would.
#define UP_OP_CAPS_RAISE 10    // effective := permitted (capset)
#define UP_OP_CAPS_CLEAR 11    // permitted, effective, inheritable := {} (capset)
#define UP_OP_KEEPCAPS 12      // prctl(PR_SET_KEEPCAPS, args[0])
#define UP_OP_AMBIENT_CLEAR 13 // prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
// Per-thread credentials (Linux).  The set calls are the raw system calls,
// which change only the calling thread (the C library's wrappers broadcast
// to every thread); ENOSYS off Linux.
#define UP_OP_THREAD_START 14      // probe children only: start a sibling thread (clone)
#define UP_OP_THREAD_SETRESUID 15  // SYS_setresuid, this thread only
#define UP_OP_THREAD_SETRESGID 16  // SYS_setresgid, this thread only
#define UP_OP_THREAD_SETGROUPS 17  // SYS_setgroups, this thread only
// Capability steps of the in-process switch (Linux; EINVAL elsewhere).  They
// change the calling thread only, like capset and prctl themselves.
// A 64-bit set travels as two args: the low 32 bits, then the high 32 bits.
#define UP_OP_CAPS_SET 18          // capset: effective, permitted, inheritable := args[0..5]
#define UP_OP_AMBIENT_RAISE 19     // prctl(PR_CAP_AMBIENT_RAISE) for each capability in args[0..1]

#define UP_MAX_ARGS 8
#define UP_MAX_GROUPS 8
#define UP_MAX_STEPS 64

// An id the child could not read back (no getresuid on this platform).
#define UP_ID_UNKNOWN (-2LL)
// An expectation that is not checked.
#define UP_ANY (-3LL)
// setgroups step whose list is in the caller's pool: args[0] offset, args[1] count.
#define UP_GROUPS_FROM_POOL (-1)
// The most supplementary groups an in-process switch reads back and sets.
// Linux allows 65,536 (NGROUPS_MAX), but every up_creds holds this many and
// a switch result three of them: 4,096 (32 kB each) covers the largest
// directory-service accounts without making every switch carry 512 kB.
// More is refused before switching, naming both numbers (accounts.py).
#define UP_SWITCH_MAX_GROUPS 4096
// up_read_creds() flags.
#define UP_READ_CAPS 1

// Feature bits returned by up_features(), detected when the engine was built.
#define UP_HAVE_GETRESUID 1
#define UP_HAVE_SETRESUID 2
#define UP_HAVE_GETRESGID 4
#define UP_HAVE_SETRESGID 8
#define UP_HAVE_THREAD_OPS 16     // the UP_OP_THREAD_* steps exist (Linux: raw system calls and clone)
#define UP_FAULT_THREAD_BROADCAST 32 // test build: thread set calls also change the sibling
#define UP_HAVE_RAW_SYSCALLS 64   // the kernel read-back is the system call instruction itself (rawsys.h), not syscall()

struct up_step {
    int op;
    int nargs;                   // setgroups: the number of groups in args, or UP_GROUPS_FROM_POOL
    long long args[UP_MAX_ARGS]; // -1 means "leave unchanged" where the call allows it
};

struct up_record {
    int index;                   // step index
    int op;
    int ret;                     // the call's return value
    int err;                     // errno when ret == -1, else 0
    long long uid[3];            // real, effective, saved as the C library reads them back
    long long gid[3];
    long long kuid[3];           // the same, as the kernel reports them (raw system call)
    long long kgid[3];
    long long fsuid, fsgid;      // filesystem ids (kernel); UP_ID_UNKNOWN off Linux
    int caps_known;              // cap_eff/cap_prm were read (Linux)
    unsigned long long cap_eff, cap_prm;
    int ngroups;                 // getgroups() count after the step, -1 if it failed
    long long groups[UP_MAX_GROUPS]; // the first UP_MAX_GROUPS of them
    // The sibling thread (UP_OP_THREAD_START), read back in that thread by
    // raw system calls after this step: the kernel's per-thread view.
    int sib_known;               // 0: no sibling thread is running
    long long sib_uid[3];
    long long sib_gid[3];
    int sib_ngroups;
    long long sib_groups[UP_MAX_GROUPS];
};

// What must hold after one step of an in-process switch; UP_ANY: not checked.
struct up_expect {
    long long uid[3];            // kernel real, effective, saved
    long long gid[3];
    long long fsuid, fsgid;
    int groups_off;              // the groups, as a set: pool[groups_off, +groups_count)
    int groups_count;            // -1: not checked
    int caps_check;              // 1: the four sets below must hold exactly (Linux); 0: not checked
    unsigned long long cap_eff, cap_prm, cap_inh, cap_amb;
};

// Every credential of the calling thread.
struct up_creds {
    long long uid[3], gid[3];    // kernel (raw system calls)
    long long libc_uid[3], libc_gid[3]; // the C library's answer (UP_ID_UNKNOWN in switch results)
    long long fsuid, fsgid;      // kernel; UP_ID_UNKNOWN off Linux
    int ngroups;                 // may exceed UP_SWITCH_MAX_GROUPS (only that many stored); -1 failed
    long long groups[UP_SWITCH_MAX_GROUPS];
    int caps_known;              // the fields below were read (UP_READ_CAPS, Linux)
    unsigned long long cap_eff, cap_prm, cap_inh, cap_amb;
    int keepcaps, securebits;    // -1 in switch results (not read there)
};

#define UP_SWITCH_OK 0          // every step ran and verified
#define UP_SWITCH_ROLLED_BACK 1 // a step failed; undone, and the start identity verified
#define UP_SWITCH_STUCK 2       // a step failed and undoing did not reach the start identity
#define UP_SWITCH_BAD_INPUT 3   // nothing was done
#define UP_SWITCH_NOT_AT_START 4 // the thread was not at the expected start identity: nothing was done

struct up_switch_result {
    int status;
    int failed_step;             // index of the first failing step, or -1
    int ret, err;                // its return value and errno
    struct up_creds start;       // read before the first step
    struct up_creds after;       // read after the failing (or last) step
    struct up_creds now;         // held on return; after UP_SWITCH_OK only what the last step checked
};

struct up_outcome {
    int nrecords;        // records stored in the caller's array
    int completed;       // the child ran every step and marked the trace complete
    int timed_out;       // the parent killed the child after the deadline
    int exited;          // exit status known and the child exited ...
    int exit_code;       // ... with this code
    int signaled;        // exit status known and the child died of ...
    int signal;          // ... this signal
    int stopped;         // the child was seen stopped by this signal (never the
                         // engine's doing: it was then killed at once), else 0
    int continued;       // the child was seen continued from a stop (SIGCONT)
    int wait_errno;      // waitpid() failed (ECHILD when SIGCHLD is ignored or
                         // another reaper took the child): status unknown
    int error;           // errno of a parent-side failure; 0 if none
    const char *failed_call; // name of the call that failed, or NULL
};

// Run `nscenarios` step lists, each in a child forked from this process
// (spawn.c).  Up to UP_WINDOW children run at once: a window is forked, then
// collected; each child is killed timeout_ms after it was forked.  Scenario
// i has counts[i] steps, taken in order from `steps`; its records start at
// records + i * UP_MAX_STEPS.  A scenario whose child could not be started
// (fork failed) has outcomes[i].error set and no records; the others still
// run.  Returns -1 when any scenario failed that way, else 0.
int up_run_batch(const struct up_step *steps, const int *counts, int nscenarios,
                 struct up_record *records, struct up_outcome *outcomes,
                 int timeout_ms);

int up_features(void);

// Read every credential of the calling thread; flags: UP_READ_CAPS.
int up_read_creds(struct up_creds *c, int flags);

// Run `steps` in the calling thread with every signal blocked (steps.c).
// `start`, if not NULL, is the identity the thread must hold first: when it
// does not, nothing is done and the status is UP_SWITCH_NOT_AT_START (a
// cached plan meets a thread whose identity changed: plan again).  After
// each step every id (and the capability sets, where expect[i] names them)
// is read back from the kernel (res->after) and compared with expect[i]; on
// the first failure or mismatch the `undo` steps run (their failures
// ignored) and the result says whether the starting identity, capability
// sets included, is back.  res->start is read only when there are undo steps or a
// `start` to check.  Returns res->status.
int up_switch(const struct up_step *steps, const struct up_expect *expect, int nsteps,
              const struct up_step *undo, int nundo, const long long *pool, int npool,
              const struct up_expect *start, struct up_switch_result *res);

// up_run_batch() in a separate small process: posix_spawn `runner` (its
// cost does not grow with the caller's memory, unlike fork), send it the
// steps, read back the outcomes and records (wire.c).  The runner serves
// this one batch and ends with it (or with this process).  Same layout of
// `records` and `outcomes` as up_run_batch(), including outcomes[i].error
// for a scenario whose child the runner could not fork.  Returns 0 when
// every outcome was received; -1 with every outcome not received saying
// why (error/failed_call) when the runner could not be started or failed
// (the caller may then fall back to up_run_batch()); UP_RUNNER_FOREIGN when
// the runner announced another wire format (up_wire_abi): nothing was sent
// to it, and nothing may fall back (the installation is broken, or the
// runner chosen cannot serve this engine).
int up_spawn_batch(const char *runner,
                   const struct up_step *steps, const int *counts, int nscenarios,
                   struct up_record *records, struct up_outcome *outcomes,
                   int timeout_ms);

// The runner announced another wire format than this engine's.
#define UP_RUNNER_FOREIGN 3
// The longest announcement, with its NUL.
#define UP_WIRE_ABI_MAX 160

// This build's announcement, as the runner sends it (without the newline):
// "uidprobe-wire/VERSION BITS ORDER header=N step=N record=N outcome=N",
// the word size in bits, the byte order and the size of every struct on the
// wire, so a runner built for another architecture or ABI is recognised.
// Its length, or -1 when `len` is too small.
int up_wire_abi(char *buf, int len);

// What the runner program `runner` announces (started with no request, it
// then exits): 0 with the line in buf, or an errno (EPIPE: it ended without
// announcing; ETIMEDOUT; EPROTO: not one line).  For saying which wire
// format a refused runner speaks.
int up_runner_abi(const char *runner, char *buf, int len, int timeout_ms);

#endif
