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
 * get).  Read-back is done twice: through the C library and from the kernel
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
#include <unistd.h>

#ifdef __linux__
#include <linux/capability.h>
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
#endif

static int set_groups(const struct up_step *s, const long long *pool, int npool)
{
    gid_t list[UP_SWITCH_MAX_GROUPS];
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
    return setgroups((size_t)n, list);
}

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
#endif
}

int up_read_creds(struct up_creds *c, int flags)
{
    libc_ids(c->libc_uid, c->libc_gid);
    kernel_ids(c->uid, c->gid, &c->fsuid, &c->fsgid);
    c->ngroups = kernel_groups(c->groups, UP_SWITCH_MAX_GROUPS);
    c->caps_known = 0;
#ifdef __linux__
    if (flags & UP_READ_CAPS) {
        struct __user_cap_data_struct d[2];
        if (caps_get(d) == 0) {
            c->cap_eff = (unsigned long long)d[1].effective << 32 | d[0].effective;
            c->cap_prm = (unsigned long long)d[1].permitted << 32 | d[0].permitted;
            c->cap_inh = (unsigned long long)d[1].inheritable << 32 | d[0].inheritable;
            c->cap_amb = 0;
            // Ambient capabilities have no bulk read: ask for each one up to
            // the first the kernel does not know.
            for (int cap = 0; cap < 64; cap++) {
                long r = prctl5(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap);
                if (r < 0)
                    break;
                if (r > 0)
                    c->cap_amb |= 1ULL << cap;
            }
            c->keepcaps = (int)prctl5(PR_GET_KEEPCAPS, 0, 0);
            c->securebits = (int)prctl5(PR_GET_SECUREBITS, 0, 0);
            c->caps_known = 1;
        }
    }
#else
    (void)flags;
#endif
    return 0;
}

// ------------------------------------------------------ in-process switch

// Is every element of want[0..nwant) in have[0..nhave) and vice versa?
// (Sets: order and duplicates do not matter.)
static int same_set(const long long *have, int nhave, const long long *want, int nwant)
{
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
    return same_set(a->groups, a->ngroups, b->groups, b->ngroups);
}

int up_switch(const struct up_step *steps, const struct up_expect *expect, int nsteps,
              const struct up_step *undo, int nundo, const long long *pool, int npool,
              struct up_switch_result *res)
{
    sigset_t all, old;

    res->status = UP_SWITCH_OK;
    res->failed_step = -1;
    res->ret = 0;
    res->err = 0;
    if (nsteps < 0 || nsteps > UP_MAX_STEPS || nundo < 0 || nundo > UP_MAX_STEPS || npool < 0) {
        res->status = UP_SWITCH_BAD_INPUT;
        return res->status;
    }
    // No signal handler may run between two steps: a handler that raises
    // in Python would otherwise leave a half-switched identity.  (glibc's
    // internal SIGSETXID, which broadcasts set*id to other threads, cannot
    // be blocked and is not affected.)
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    up_read_creds(&res->start, 0);
    for (int i = 0; i < nsteps; i++) {
        errno = 0;
        int ret = up_do_step(&steps[i], pool, npool);
        int err = ret == -1 ? errno : 0;
        up_read_creds(&res->after, 0);
        if (ret == 0 && matches(&expect[i], &res->after, pool, npool))
            continue;
        // First failure or mismatch: undo, whatever each undo call says,
        // then check that the starting identity is back.
        res->failed_step = i;
        res->ret = ret;
        res->err = err;
        for (int j = 0; j < nundo; j++)
            (void)up_do_step(&undo[j], pool, npool);
        up_read_creds(&res->now, 0);
        res->status = same_identity(&res->now, &res->start) ? UP_SWITCH_ROLLED_BACK : UP_SWITCH_STUCK;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return res->status;
    }
    res->now = nsteps > 0 ? res->after : res->start;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return res->status;
}
