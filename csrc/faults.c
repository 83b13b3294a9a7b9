/*
 * Fault injection for uidprobe's tests: an LD_PRELOAD library that makes the
 * C library's set*id calls behave like a broken platform, so the tests can
 * prove each probe notices.  Never installed; the tests compile it.
 *
 *   cc -shared -fPIC -o faults.so csrc/faults.c -ldl
 *   UIDPROBE_FAULT=<profile> LD_PRELOAD=./faults.so python -m uidprobe
 *
 * Profiles:
 *   seteuid-moves-saved   seteuid(e) also sets the saved uid to e (old
 *                         non-POSIX seteuid; musl < 0.8 via setreuid(-1, e))
 *   setegid-moves-saved   the same for setegid
 *   setreuid-ignores-real setreuid(r, e) ignores r
 *   setuid-keeps-saved    setuid(u) by root leaves the saved uid at 0 (what the
 *                         2000 Linux capabilities bug did to sendmail)
 *   eperm                 every set*id call fails with EPERM (a sandbox)
 *   crash                 the first set*id call dereferences NULL
 *   hang                  the first set*id call never returns
 *
 * The profile is read once, at load time: the calls themselves run in a
 * forked child and must stay async-signal-safe (no getenv there).
 */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

enum fault { NONE, SETEUID_MOVES_SAVED, SETEGID_MOVES_SAVED, SETREUID_IGNORES_REAL,
             SETUID_KEEPS_SAVED, EPERM_ALL, CRASH, HANG };

static enum fault profile = NONE;

static int (*real_setresuid)(uid_t, uid_t, uid_t);
static int (*real_setresgid)(gid_t, gid_t, gid_t);
static int (*real_setreuid)(uid_t, uid_t);
static int (*real_setregid)(gid_t, gid_t);
static int (*real_setuid)(uid_t);
static int (*real_setgid)(gid_t);
static int (*real_seteuid)(uid_t);
static int (*real_setegid)(gid_t);
static int (*real_setgroups)(size_t, const gid_t *);

__attribute__((constructor)) static void load(void)
{
    static const struct { const char *name; enum fault f; } names[] = {
        {"seteuid-moves-saved", SETEUID_MOVES_SAVED},
        {"setegid-moves-saved", SETEGID_MOVES_SAVED},
        {"setreuid-ignores-real", SETREUID_IGNORES_REAL},
        {"setuid-keeps-saved", SETUID_KEEPS_SAVED},
        {"eperm", EPERM_ALL},
        {"crash", CRASH},
        {"hang", HANG},
    };
    const char *want = getenv("UIDPROBE_FAULT");
    for (size_t i = 0; want && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(want, names[i].name) == 0)
            profile = names[i].f;
    real_setresuid = dlsym(RTLD_NEXT, "setresuid");
    real_setresgid = dlsym(RTLD_NEXT, "setresgid");
    real_setreuid = dlsym(RTLD_NEXT, "setreuid");
    real_setregid = dlsym(RTLD_NEXT, "setregid");
    real_setuid = dlsym(RTLD_NEXT, "setuid");
    real_setgid = dlsym(RTLD_NEXT, "setgid");
    real_seteuid = dlsym(RTLD_NEXT, "seteuid");
    real_setegid = dlsym(RTLD_NEXT, "setegid");
    real_setgroups = dlsym(RTLD_NEXT, "setgroups");
}

// Common faults of every call.  Returns 1 when the call must fail now.
static int common_fault(void)
{
    switch (profile) {
    case EPERM_ALL:
        errno = EPERM;
        return 1;
    case CRASH:
        *(volatile int *)0 = 1;
        return 1;
    case HANG:
        for (;;)
            pause(); // signals are blocked in the probe child: only SIGKILL ends this
    default:
        return 0;
    }
}

int setresuid(uid_t r, uid_t e, uid_t s)
{
    return common_fault() ? -1 : real_setresuid(r, e, s);
}

int setresgid(gid_t r, gid_t e, gid_t s)
{
    return common_fault() ? -1 : real_setresgid(r, e, s);
}

int seteuid(uid_t e)
{
    if (common_fault())
        return -1;
    if (profile == SETEUID_MOVES_SAVED)
        return real_setresuid((uid_t)-1, e, e);
    return real_seteuid(e);
}

int setegid(gid_t e)
{
    if (common_fault())
        return -1;
    if (profile == SETEGID_MOVES_SAVED)
        return real_setresgid((gid_t)-1, e, e);
    return real_setegid(e);
}

int setreuid(uid_t r, uid_t e)
{
    if (common_fault())
        return -1;
    if (profile == SETREUID_IGNORES_REAL)
        return real_setreuid((uid_t)-1, e);
    return real_setreuid(r, e);
}

int setregid(gid_t r, gid_t e)
{
    return common_fault() ? -1 : real_setregid(r, e);
}

int setuid(uid_t u)
{
    if (common_fault())
        return -1;
    if (profile == SETUID_KEEPS_SAVED && geteuid() == 0)
        return real_setresuid(u, u, (uid_t)-1);
    return real_setuid(u);
}

int setgid(gid_t g)
{
    return common_fault() ? -1 : real_setgid(g);
}

int setgroups(size_t n, const gid_t *list)
{
    return common_fault() ? -1 : real_setgroups(n, list);
}
