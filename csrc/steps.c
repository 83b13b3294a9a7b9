/*
 * uidprobe step runner: perform one set*id step, read every id back.
 *
 * Used in two places, with the same step format:
 *   - the probe children (engine.c forks them; each runs a list of steps),
 *   - up_switch(), which runs a list of steps in the calling process with
 *     every signal blocked, verifying each and rolling back on a mismatch.
 *
 * Everything here is async-signal-safe: set*id/get*id calls, capget/capset
 * and prctl (raw system calls), plain stores.  No malloc, no stdio.
 *
 * The set*id steps go through the C library (its seteuid is what callers
 * get); the UP_OP_THREAD_* steps are the raw system calls, which change the
 * calling thread only (the C library's wrappers broadcast to every thread).  Read-back is done twice: through the C library and from the kernel
 * directly (rawsys.h: the system call instruction itself, so no preloaded
 * library, not even one that interposes syscall(), stands between), so an
 * emulated C library such as fakeroot cannot fake the answer: where the two
 * disagree, the Python side says so instead of believing either.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 // getresuid() and friends on glibc
#endif

#include "engine.h"
#include "rawsys.h"

#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/capability.h>
#include <linux/futex.h>
#include <sys/prctl.h>
#endif

// ------------------------------------------------------------------ steps

#ifdef __linux__
// A step's result in the C convention (-1 and errno) from a raw call's.
static int as_step(long r)
{
    if (r < 0) {
        errno = (int)-r;
        return -1;
    }
    return (int)r;
}

static long prctl5(long option, long a, long b)
{
    return up_sys(SYS_prctl, option, a, b, 0, 0);
}

static int caps_get(struct __user_cap_data_struct data[2])
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    return as_step(up_sys(SYS_capget, (long)&h, (long)data, 0, 0, 0));
}

static int caps_set(struct __user_cap_data_struct data[2])
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    return as_step(up_sys(SYS_capset, (long)&h, (long)data, 0, 0, 0));
}

// Make the effective set equal the permitted set: what an attacker who
// kept permitted capabilities would do before calling setuid(0).
static int caps_raise(void)
{
    struct __user_cap_data_struct d[2];
    if (caps_get(d) != 0)
        return -1;
    d[0].effective = d[0].permitted;
    d[1].effective = d[1].permitted;
    return caps_set(d);
}

// Empty the permitted, effective and inheritable sets (always allowed).
static int caps_clear(void)
{
    struct __user_cap_data_struct d[2] = {{0, 0, 0}, {0, 0, 0}};
    return caps_set(d);
}

// UP_OP_CAPS_SET: the three sets exactly as the step gives them, each as a
// (low 32 bits, high 32 bits) pair.  The kernel allows lowering anything and
// raising the effective set within the permitted one: what a switch needs
// to put its effective set away and take it back.  Usually the kernel's
// setuid fixup has done it already, and capset (which commits new
// credentials: several times the cost of capget) is skipped.
static int caps_set_to(const struct up_step *s)
{
    struct __user_cap_data_struct want[2], have[2];
    for (int i = 0; i < 2; i++) {
        want[i].effective = (__u32)s->args[0 + i];
        want[i].permitted = (__u32)s->args[2 + i];
        want[i].inheritable = (__u32)s->args[4 + i];
    }
    if (caps_get(have) == 0) {
        int same = 1;
        for (int i = 0; i < 2; i++)
            same &= have[i].effective == want[i].effective && have[i].permitted == want[i].permitted &&
                    have[i].inheritable == want[i].inheritable;
        if (same)
            return 0;
    }
    return caps_set(want);
}

// UP_OP_AMBIENT_RAISE: raise each capability of the (low, high) set; the
// first refusal stops (errno set).
static int ambient_raise(const struct up_step *s)
{
    unsigned long long set = (unsigned long long)(__u32)s->args[1] << 32 | (__u32)s->args[0];
    for (int cap = 0; cap < 64; cap++)
        if (set >> cap & 1 && as_step(prctl5(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)) != 0)
            return -1;
    return 0;
}
#endif

// The group list of a setgroups step into `list`; its length, or -1 with errno.
static int group_list(const struct up_step *s, const long long *pool, int npool, gid_t *list)
{
    int off = 0, n = s->nargs;
    const long long *src = s->args;
    if (n == UP_GROUPS_FROM_POOL) {
        // args[0], args[1]: offset and count in the caller's pool.
        off = (int)s->args[0];
        n = (int)s->args[1];
        if (pool == NULL || off < 0 || n < 0 || off > npool || n > npool - off) {
            errno = EINVAL;
            return -1;
        }
        src = pool + off;
    }
    if (n < 0 || n > UP_SWITCH_MAX_GROUPS || (s->nargs != UP_GROUPS_FROM_POOL && n > UP_MAX_ARGS)) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < n; i++)
        list[i] = (gid_t)src[i];
    return n;
}

static int set_groups(const struct up_step *s, const long long *pool, int npool)
{
    gid_t list[UP_SWITCH_MAX_GROUPS];
    int n = group_list(s, pool, npool, list);
    return n < 0 ? -1 : setgroups((size_t)n, list);
}

// ------------------------------------------------------ per-thread steps

#ifdef __linux__
// The raw call behind a UP_OP_THREAD_SET* step: the calling thread only.
// Returns what the kernel returns (>= 0, or -errno).  No errno: the sibling
// thread runs this too, and it has no thread-local storage of its own.
static long thread_set(const struct up_step *s, const long long *pool, int npool)
{
    gid_t list[UP_SWITCH_MAX_GROUPS];
    int n;
    switch (s->op) {
    case UP_OP_THREAD_SETRESUID:
        return up_sys(UP_SYS_SETRESUID, (long)(uid_t)s->args[0], (long)(uid_t)s->args[1],
                      (long)(uid_t)s->args[2], 0, 0);
    case UP_OP_THREAD_SETRESGID:
        return up_sys(UP_SYS_SETRESGID, (long)(gid_t)s->args[0], (long)(gid_t)s->args[1],
                      (long)(gid_t)s->args[2], 0, 0);
    case UP_OP_THREAD_SETGROUPS: {
        int saved = errno; // group_list reports with errno; keep the thread's own
        n = group_list(s, pool, npool, list);
        long r = n < 0 ? -(long)errno : up_sys(UP_SYS_SETGROUPS, n, (long)list, 0, 0, 0);
        errno = saved;
        return r;
    }
    default:
        return -EINVAL;
    }
}

static void kernel_ids(long long uid[3], long long gid[3], long long *fsuid, long long *fsgid);
static int kernel_groups(long long *out, int max);

// The sibling thread of a probe child (UP_OP_THREAD_START).  It is started
// with the C library's clone() on a static stack (rawsys.h), not
// pthread_create(): the child was forked from a possibly multithreaded
// caller, where pthread_create is not async-signal-safe (it allocates, and
// takes locks another thread may have held at fork time); clone() is the
// system call alone.  The runner (a single-threaded process) could have
// used pthread_create, but the children are also forked from the caller
// itself (Transport.FORK, and when no runner is installed): one mechanism
// for both.  The sibling makes raw system calls and plain stores only, and
// talks to the child's main thread through this mailbox and futexes.
// It lives only in probe children: up_switch() refuses UP_OP_THREAD_START.
enum { SIB_READ = 1, SIB_STEP = 2 };

static struct {
    int running;                // main thread only
    int request;                // sequence number of the last request (main writes)
    int done;                   // the last request handled (sibling writes)
    int cmd;                    // SIB_READ, or SIB_STEP then read
    struct up_step step;        // SIB_STEP: the call to make in the sibling too
    long long uid[3], gid[3], fsuid, fsgid; // read back in the sibling
    int ngroups;
    long long groups[UP_MAX_GROUPS];
} sib;

static char sib_stack[64 * 1024] __attribute__((aligned(16)));

static void futex_wait(int *addr, int val)
{
    (void)up_sys(SYS_futex, (long)addr, FUTEX_WAIT_PRIVATE, val, 0, 0);
}

static void futex_wake(int *addr)
{
    (void)up_sys(SYS_futex, (long)addr, FUTEX_WAKE_PRIVATE, 1, 0, 0);
}

__attribute__((noreturn)) static int sibling_main(void *unused)
{
    (void)unused;
    int seen = 0;
    for (;;) {
        int req;
        while ((req = __atomic_load_n(&sib.request, __ATOMIC_ACQUIRE)) == seen)
            futex_wait(&sib.request, seen);
        seen = req;
        if (sib.cmd == SIB_STEP)
            (void)thread_set(&sib.step, NULL, 0);
        kernel_ids(sib.uid, sib.gid, &sib.fsuid, &sib.fsgid);
        sib.ngroups = kernel_groups(sib.groups, UP_MAX_GROUPS);
        __atomic_store_n(&sib.done, req, __ATOMIC_RELEASE);
        futex_wake(&sib.done);
    }
}

// Have the sibling do `cmd` and wait until it has.
static void sibling_ask(int cmd, const struct up_step *s)
{
    sib.cmd = cmd;
    if (s != NULL)
        sib.step = *s;
    int req = sib.request + 1;
    __atomic_store_n(&sib.request, req, __ATOMIC_RELEASE);
    futex_wake(&sib.request);
    int d;
    while ((d = __atomic_load_n(&sib.done, __ATOMIC_ACQUIRE)) != req)
        futex_wait(&sib.done, d);
}

static int thread_start(void)
{
    if (sib.running) {
        errno = EBUSY;
        return -1;
    }
    long r = up_clone_thread(sib_stack + sizeof sib_stack, sibling_main, NULL);
    if (r < 0)
        return as_step(r);
    sib.running = 1;
    return 0;
}

static int thread_step(const struct up_step *s, const long long *pool, int npool)
{
    long r = thread_set(s, pool, npool);
#ifdef UP_FAULT_THREAD_BROADCAST_BUILD
    // Test build only: behave like a platform whose per-thread call changes
    // every thread (the C library's wrappers do; so did LinuxThreads-era
    // kernels).  The probe must then say 0.
    if (r == 0 && sib.running && s->nargs != UP_GROUPS_FROM_POOL)
        sibling_ask(SIB_STEP, s);
#endif
    return as_step(r);
}
#endif

int up_do_step(const struct up_step *s, const long long *pool, int npool)
{
    uid_t u0 = (uid_t)s->args[0], u1 = (uid_t)s->args[1], u2 = (uid_t)s->args[2];
    gid_t g0 = (gid_t)s->args[0], g1 = (gid_t)s->args[1], g2 = (gid_t)s->args[2];

    switch (s->op) {
    case UP_OP_SETUID:
        return setuid(u0);
    case UP_OP_SETEUID:
        return seteuid(u0);
    case UP_OP_SETREUID:
        return setreuid(u0, u1);
    case UP_OP_SETRESUID:
#ifdef HAVE_SETRESUID
        return setresuid(u0, u1, u2);
#else
        (void)u2;
        errno = ENOSYS;
        return -1;
#endif
    case UP_OP_SETGID:
        return setgid(g0);
    case UP_OP_SETEGID:
        return setegid(g0);
    case UP_OP_SETREGID:
        return setregid(g0, g1);
    case UP_OP_SETRESGID:
#ifdef HAVE_SETRESGID
        return setresgid(g0, g1, g2);
#else
        (void)g2;
        errno = ENOSYS;
        return -1;
#endif
    case UP_OP_SETGROUPS:
        return set_groups(s, pool, npool);
#ifdef __linux__
    case UP_OP_CAPS_RAISE:
        return caps_raise();
    case UP_OP_CAPS_CLEAR:
        return caps_clear();
    case UP_OP_KEEPCAPS:
        return as_step(prctl5(PR_SET_KEEPCAPS, (long)s->args[0], 0));
    case UP_OP_AMBIENT_CLEAR:
        return as_step(prctl5(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0));
    case UP_OP_CAPS_SET:
        return caps_set_to(s);
    case UP_OP_AMBIENT_RAISE:
        return ambient_raise(s);
    case UP_OP_THREAD_START:
        return thread_start();
    case UP_OP_THREAD_SETRESUID:
    case UP_OP_THREAD_SETRESGID:
    case UP_OP_THREAD_SETGROUPS:
        return thread_step(s, pool, npool);
#else
    case UP_OP_THREAD_START:
    case UP_OP_THREAD_SETRESUID:
    case UP_OP_THREAD_SETRESGID:
    case UP_OP_THREAD_SETGROUPS:
        errno = ENOSYS;
        return -1;
#endif
    default:
        errno = EINVAL;
        return -1;
    }
}

// ------------------------------------------------------------- read-back

// The C library's view.  The saved ids need getresuid(); where the C
// library lacks it they are UP_ID_UNKNOWN and Python infers them instead.
static void libc_ids(long long uid[3], long long gid[3])
{
#ifdef HAVE_GETRESUID
    uid_t ru, eu, su;
    if (getresuid(&ru, &eu, &su) == 0) {
        uid[0] = ru; uid[1] = eu; uid[2] = su;
    } else {
        uid[0] = getuid(); uid[1] = geteuid(); uid[2] = UP_ID_UNKNOWN;
    }
#else
    uid[0] = getuid(); uid[1] = geteuid(); uid[2] = UP_ID_UNKNOWN;
#endif
#ifdef HAVE_GETRESGID
    gid_t rg, eg, sg;
    if (getresgid(&rg, &eg, &sg) == 0) {
        gid[0] = rg; gid[1] = eg; gid[2] = sg;
    } else {
        gid[0] = getgid(); gid[1] = getegid(); gid[2] = UP_ID_UNKNOWN;
    }
#else
    gid[0] = getgid(); gid[1] = getegid(); gid[2] = UP_ID_UNKNOWN;
#endif
}

// The kernel's view, by raw system call: no C library (or preload) between.
// setfsuid(-1) changes nothing and returns the current fsuid: no /proc needed.
static void kernel_ids(long long uid[3], long long gid[3], long long *fsuid, long long *fsgid)
{
#ifdef __linux__
    uid_t u[3];
    gid_t g[3];
    if (up_sys(UP_SYS_GETRESUID, (long)&u[0], (long)&u[1], (long)&u[2], 0, 0) == 0) {
        uid[0] = u[0]; uid[1] = u[1]; uid[2] = u[2];
    } else {
        uid[0] = uid[1] = uid[2] = UP_ID_UNKNOWN;
    }
    if (up_sys(UP_SYS_GETRESGID, (long)&g[0], (long)&g[1], (long)&g[2], 0, 0) == 0) {
        gid[0] = g[0]; gid[1] = g[1]; gid[2] = g[2];
    } else {
        gid[0] = gid[1] = gid[2] = UP_ID_UNKNOWN;
    }
    // setfsuid(-1) changes nothing and returns the current value.
    *fsuid = (long long)(uid_t)up_sys(UP_SYS_SETFSUID, (long)(uid_t)-1, 0, 0, 0, 0);
    *fsgid = (long long)(gid_t)up_sys(UP_SYS_SETFSGID, (long)(gid_t)-1, 0, 0, 0, 0);
#else
    // No kernel interface to ask past the C library: report its view.
    libc_ids(uid, gid);
    *fsuid = *fsgid = UP_ID_UNKNOWN;
#endif
}

static int kernel_groups(long long *out, int max)
{
    gid_t groups[UP_SWITCH_MAX_GROUPS];
    int cap = max < UP_SWITCH_MAX_GROUPS ? max : UP_SWITCH_MAX_GROUPS;
#ifdef __linux__
    int n = (int)up_sys(UP_SYS_GETGROUPS, cap, (long)groups, 0, 0, 0);
    if (n == -EINVAL)
        n = (int)up_sys(UP_SYS_GETGROUPS, 0, (long)groups, 0, 0, 0); // more than we keep: the count only
    if (n < 0)
        n = -1;
#else
    int n = getgroups(cap, groups);
    if (n < 0 && errno == EINVAL)
        n = getgroups(0, groups);
#endif
    for (int i = 0; i < n && i < cap; i++)
        out[i] = groups[i];
    return n;
}

void up_read_record(struct up_record *r)
{
    libc_ids(r->uid, r->gid);
    kernel_ids(r->kuid, r->kgid, &r->fsuid, &r->fsgid);
    r->ngroups = kernel_groups(r->groups, UP_MAX_GROUPS);
#ifdef __linux__
    struct __user_cap_data_struct d[2];
    if (caps_get(d) == 0) {
        r->cap_eff = (unsigned long long)d[1].effective << 32 | d[0].effective;
        r->cap_prm = (unsigned long long)d[1].permitted << 32 | d[0].permitted;
        r->caps_known = 1;
    }
    r->sib_known = 0;
    if (sib.running) {
        sibling_ask(SIB_READ, NULL);
        r->sib_known = 1;
        for (int i = 0; i < 3; i++) {
            r->sib_uid[i] = sib.uid[i];
            r->sib_gid[i] = sib.gid[i];
        }
        r->sib_ngroups = sib.ngroups;
        for (int i = 0; i < sib.ngroups && i < UP_MAX_GROUPS; i++)
            r->sib_groups[i] = sib.groups[i];
    }
#endif
}

// The calling thread's capability sets, and with `bits` keepcaps and
// securebits (else -1: a switch compares the sets only).  Linux; caps_known
// stays 0 elsewhere or when capget fails.
static void read_caps(struct up_creds *c, int bits)
{
    c->caps_known = 0;
#ifdef __linux__
    struct __user_cap_data_struct d[2];
    if (caps_get(d) != 0)
        return;
    c->cap_eff = (unsigned long long)d[1].effective << 32 | d[0].effective;
    c->cap_prm = (unsigned long long)d[1].permitted << 32 | d[0].permitted;
    c->cap_inh = (unsigned long long)d[1].inheritable << 32 | d[0].inheritable;
    c->cap_amb = 0;
    // Ambient capabilities have no bulk read, but the kernel keeps the
    // ambient set within permitted and inheritable: ask only about those
    // (usually none, as a root process's inheritable set is empty).
    unsigned long long maybe = c->cap_prm & c->cap_inh;
    for (int cap = 0; cap < 64; cap++) {
        if (!(maybe >> cap & 1))
            continue;
        long r = prctl5(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap);
        if (r > 0)
            c->cap_amb |= 1ULL << cap;
    }
    c->keepcaps = bits ? (int)prctl5(PR_GET_KEEPCAPS, 0, 0) : -1;
    c->securebits = bits ? (int)prctl5(PR_GET_SECUREBITS, 0, 0) : -1;
    c->caps_known = 1;
#else
    (void)c;
    (void)bits;
#endif
}

int up_read_creds(struct up_creds *c, int flags)
{
    libc_ids(c->libc_uid, c->libc_gid);
    kernel_ids(c->uid, c->gid, &c->fsuid, &c->fsgid);
    c->ngroups = kernel_groups(c->groups, UP_SWITCH_MAX_GROUPS);
    c->caps_known = 0;
    if (flags & UP_READ_CAPS)
        read_caps(c, 1);
    return 0;
}

// ------------------------------------------------------ in-process switch

// Is a[0..n) in ascending order (duplicates allowed)?
static int ascending(const long long *a, int n)
{
    for (int i = 1; i < n; i++)
        if (a[i] < a[i - 1])
            return 0;
    return 1;
}

// Is every element of want[0..nwant) in have[0..nhave) and vice versa?
// (Sets: order and duplicates do not matter.)  Linear when both are in
// ascending order, as they are on Linux (the kernel keeps the groups sorted,
// and the expectations come sorted from Python): a list of thousands of
// groups is then checked in microseconds.  Quadratic otherwise.
static int same_set(const long long *have, int nhave, const long long *want, int nwant)
{
    if (ascending(have, nhave) && ascending(want, nwant)) {
        int i = 0, j = 0;
        while (i < nhave || j < nwant) {
            if (i == nhave || j == nwant || have[i] != want[j])
                return 0;
            long long v = have[i];
            while (i < nhave && have[i] == v)
                i++;
            while (j < nwant && want[j] == v)
                j++;
        }
        return 1;
    }
    for (int i = 0; i < nhave; i++) {
        int found = 0;
        for (int j = 0; j < nwant && !found; j++)
            found = have[i] == want[j];
        if (!found)
            return 0;
    }
    for (int j = 0; j < nwant; j++) {
        int found = 0;
        for (int i = 0; i < nhave && !found; i++)
            found = have[i] == want[j];
        if (!found)
            return 0;
    }
    return 1;
}

static int id_ok(long long want, long long got)
{
    return want == UP_ANY || want == got;
}

// Does `c` satisfy `e`?
static int matches(const struct up_expect *e, const struct up_creds *c, const long long *pool, int npool)
{
    for (int i = 0; i < 3; i++)
        if (!id_ok(e->uid[i], c->uid[i]) || !id_ok(e->gid[i], c->gid[i]))
            return 0;
    if (!id_ok(e->fsuid, c->fsuid) || !id_ok(e->fsgid, c->fsgid))
        return 0;
    if (e->groups_count >= 0) {
        if (e->groups_off < 0 || e->groups_off > npool || e->groups_count > npool - e->groups_off)
            return 0;
        if (c->ngroups < 0 || c->ngroups > UP_SWITCH_MAX_GROUPS)
            return 0;
        if (!same_set(c->groups, c->ngroups, pool + e->groups_off, e->groups_count))
            return 0;
    }
    if (e->caps_check && !(c->caps_known && c->cap_eff == e->cap_eff && c->cap_prm == e->cap_prm &&
                           c->cap_inh == e->cap_inh && c->cap_amb == e->cap_amb))
        return 0;
    return 1;
}

// The identity a rollback must reach: exactly the one read at the start.
static int same_identity(const struct up_creds *a, const struct up_creds *b)
{
    for (int i = 0; i < 3; i++)
        if (a->uid[i] != b->uid[i] || a->gid[i] != b->gid[i])
            return 0;
    if (a->fsuid != b->fsuid || a->fsgid != b->fsgid)
        return 0;
    if (a->ngroups != b->ngroups || a->ngroups < 0 || a->ngroups > UP_SWITCH_MAX_GROUPS)
        return 0;
    if (a->caps_known != b->caps_known)
        return 0;
    if (a->caps_known && (a->cap_eff != b->cap_eff || a->cap_prm != b->cap_prm || a->cap_inh != b->cap_inh ||
                          a->cap_amb != b->cap_amb))
        return 0;
    return same_set(a->groups, a->ngroups, b->groups, b->ngroups);
}

// What an expectation looks at: the reads up_switch() must make after a step.
enum { NEED_UIDS = 1, NEED_GIDS = 2, NEED_GROUPS = 4, NEED_CAPS = 8, NEED_ALL = 15 };

static int needs(const struct up_expect *e)
{
    int n = 0;
    for (int i = 0; i < 3; i++) {
        if (e->uid[i] != UP_ANY)
            n |= NEED_UIDS;
        if (e->gid[i] != UP_ANY)
            n |= NEED_GIDS;
    }
    if (e->fsuid != UP_ANY)
        n |= NEED_UIDS;
    if (e->fsgid != UP_ANY)
        n |= NEED_GIDS;
    if (e->groups_count >= 0)
        n |= NEED_GROUPS;
    if (e->caps_check)
        n |= NEED_CAPS;
    return n;
}

// The calling thread's identity for up_switch(): the kernel's view only
// (the C library's answer is not compared), and only the families `need`
// names (the others are UP_ID_UNKNOWN, groups -1, caps_known 0): an
// expectation about the uids alone costs two system calls, not eight.
static void switch_creds(struct up_creds *c, int need)
{
#ifdef __linux__
    for (int i = 0; i < 3; i++)
        c->uid[i] = c->gid[i] = c->libc_uid[i] = c->libc_gid[i] = UP_ID_UNKNOWN;
    c->fsuid = c->fsgid = UP_ID_UNKNOWN;
    if (need & NEED_UIDS) {
        uid_t u[3];
        if (up_sys(UP_SYS_GETRESUID, (long)&u[0], (long)&u[1], (long)&u[2], 0, 0) == 0)
            for (int i = 0; i < 3; i++)
                c->uid[i] = u[i];
        c->fsuid = (long long)(uid_t)up_sys(UP_SYS_SETFSUID, (long)(uid_t)-1, 0, 0, 0, 0);
    }
    if (need & NEED_GIDS) {
        gid_t g[3];
        if (up_sys(UP_SYS_GETRESGID, (long)&g[0], (long)&g[1], (long)&g[2], 0, 0) == 0)
            for (int i = 0; i < 3; i++)
                c->gid[i] = g[i];
        c->fsgid = (long long)(gid_t)up_sys(UP_SYS_SETFSGID, (long)(gid_t)-1, 0, 0, 0, 0);
    }
#else
    (void)need;
    kernel_ids(c->uid, c->gid, &c->fsuid, &c->fsgid);
    for (int i = 0; i < 3; i++)
        c->libc_uid[i] = c->libc_gid[i] = UP_ID_UNKNOWN;
    need |= NEED_GROUPS;
#endif
    c->ngroups = need & NEED_GROUPS ? kernel_groups(c->groups, UP_SWITCH_MAX_GROUPS) : -1;
    c->caps_known = 0;
    if (need & NEED_CAPS)
        read_caps(c, 0);
}

// *dst = *src, but only the groups in use: a whole up_creds is 32 kB, most
// of it unused, and this copy is on every switch's path.  The unused groups
// must be the only bytes skipped:
_Static_assert(offsetof(struct up_creds, caps_known) ==
                   offsetof(struct up_creds, groups) + UP_SWITCH_MAX_GROUPS * sizeof(long long),
               "copy_creds skips only the unused groups: keep caps_known right after groups");
static void copy_creds(struct up_creds *dst, const struct up_creds *src)
{
    size_t head = offsetof(struct up_creds, groups);
    size_t n = src->ngroups > 0 ? (size_t)(src->ngroups < UP_SWITCH_MAX_GROUPS ? src->ngroups : UP_SWITCH_MAX_GROUPS) : 0;
    memcpy(dst, src, head + n * sizeof src->groups[0]);
    memcpy(&dst->caps_known, &src->caps_known, sizeof *src - offsetof(struct up_creds, caps_known));
}

// Steps an in-process switch may make: everything but starting a thread.
static int switchable(const struct up_step *steps, int n)
{
    for (int i = 0; i < n; i++)
        if (steps[i].op == UP_OP_THREAD_START)
            return 0;
    return 1;
}

int up_switch(const struct up_step *steps, const struct up_expect *expect, int nsteps,
              const struct up_step *undo, int nundo, const long long *pool, int npool,
              const struct up_expect *start, struct up_switch_result *res)
{
    sigset_t all, old;

    res->status = UP_SWITCH_OK;
    res->failed_step = -1;
    res->ret = 0;
    res->err = 0;
    if (nsteps < 0 || nsteps > UP_MAX_STEPS || nundo < 0 || nundo > UP_MAX_STEPS || npool < 0 ||
        !switchable(steps, nsteps) || !switchable(undo, nundo)) {
        res->status = UP_SWITCH_BAD_INPUT;
        return res->status;
    }
    // No signal handler may run between two steps: a handler that raises
    // in Python would otherwise leave a half-switched identity.  (glibc's
    // internal SIGSETXID, which broadcasts set*id to other threads, cannot
    // be blocked and is not affected.)
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int have_start = nundo > 0 || start != NULL;
    if (have_start)
        switch_creds(&res->start, NEED_ALL);
    if (start != NULL && !matches(start, &res->start, pool, npool)) {
        copy_creds(&res->now, &res->start);
        res->status = UP_SWITCH_NOT_AT_START;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return res->status;
    }
    for (int i = 0; i < nsteps; i++) {
        errno = 0;
        int ret = up_do_step(&steps[i], pool, npool);
        int err = ret == -1 ? errno : 0;
        switch_creds(&res->after, needs(&expect[i]));
        if (ret == 0 && matches(&expect[i], &res->after, pool, npool))
            continue;
        // First failure or mismatch: undo, whatever each undo call says,
        // then check that the starting identity is back.  Without undo
        // steps (and so without a start read) nothing was undone: STUCK.
        res->failed_step = i;
        res->ret = ret;
        res->err = err;
        for (int j = 0; j < nundo; j++)
            (void)up_do_step(&undo[j], pool, npool);
        switch_creds(&res->now, NEED_ALL);
        res->status = have_start && same_identity(&res->now, &res->start) ? UP_SWITCH_ROLLED_BACK : UP_SWITCH_STUCK;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return res->status;
    }
    // What the thread holds: on success, the last step's read-back (every
    // family it checked; a full read more would cost a quarter of a switch).
    if (nsteps > 0)
        copy_creds(&res->now, &res->after);
    else if (have_start)
        copy_creds(&res->now, &res->start);
    else
        switch_creds(&res->now, NEED_ALL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return res->status;
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
#ifdef __linux__
    f |= UP_HAVE_THREAD_OPS;
#endif
#ifdef UP_FAULT_THREAD_BROADCAST_BUILD
    f |= UP_FAULT_THREAD_BROADCAST;
#endif
#if defined(__linux__) && UP_RAW_SYSCALLS
    f |= UP_HAVE_RAW_SYSCALLS;
#endif
    return f;
}
