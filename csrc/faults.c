/*
 * Fault injection for uidprobe's tests: an LD_PRELOAD library that makes the
 * C library's set*id calls behave like a broken platform, so the tests can
 * prove each probe notices.  Never installed; the tests compile it.
 *
 *   cc -shared -fPIC -o faults.so csrc/faults.c -ldl
 *   UIDPROBE_FAULT=<profile> LD_PRELOAD=./faults.so python -m uidprobe
 *
 * Profiles (UIDPROBE_FAULT takes one, or several separated by commas):
 *   seteuid-moves-saved   seteuid(e) also sets the saved uid to e (old
 *                         non-POSIX seteuid; musl < 0.8 via setreuid(-1, e))
 *   setegid-moves-saved   the same for setegid
 *   setreuid-ignores-real setreuid(r, e) ignores r
 *   setuid-keeps-saved    setuid(u) by root leaves the saved uid at 0 (what the
 *                         2000 Linux capabilities bug did to sendmail)
 *   no-setresuid          setresuid and setresgid fail with ENOSYS (a C library
 *                         that has only stubs for them)
 *   setresuid-ignored     setresuid returns success and changes nothing (a
 *                         call that lies: the probes must not build on it)
 *   setgroups-ignored     setgroups returns success and changes nothing
 *   setgroups-drops-last  setgroups sets every group but the last of a list of
 *                         more than one (a C library that truncates long lists)
 *   fsuid-stays-root      after every uid change the filesystem uid is put back
 *                         to 0 where the kernel allows it
 *   lying-success         a set*id call that fails returns 0 instead
 *   eperm                 every set*id call fails with EPERM (a sandbox)
 *   crash                 the first set*id call dereferences NULL
 *   hang                  the first set*id call never returns
 *   hang-as-user          a set*id call made while the real uid is not 0 never
 *                         returns (the child waits where any process of that
 *                         uid may signal it)
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
#include <sys/fsuid.h>
#include <unistd.h>

enum fault {
    SETEUID_MOVES_SAVED = 1 << 0,
    SETEGID_MOVES_SAVED = 1 << 1,
    SETREUID_IGNORES_REAL = 1 << 2,
    SETUID_KEEPS_SAVED = 1 << 3,
    NO_SETRESUID = 1 << 4,
    SETGROUPS_IGNORED = 1 << 5,
    FSUID_STAYS_ROOT = 1 << 6,
    LYING_SUCCESS = 1 << 7,
    EPERM_ALL = 1 << 8,
    CRASH = 1 << 9,
    HANG = 1 << 10,
    SETRESUID_IGNORED = 1 << 11,
    SETGROUPS_DROPS_LAST = 1 << 12,
    HANG_AS_USER = 1 << 13,
};

static unsigned profile;

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
        {"no-setresuid", NO_SETRESUID},
        {"setgroups-ignored", SETGROUPS_IGNORED},
        {"fsuid-stays-root", FSUID_STAYS_ROOT},
        {"lying-success", LYING_SUCCESS},
        {"eperm", EPERM_ALL},
        {"crash", CRASH},
        {"hang", HANG},
        {"setresuid-ignored", SETRESUID_IGNORED},
        {"setgroups-drops-last", SETGROUPS_DROPS_LAST},
        {"hang-as-user", HANG_AS_USER},
    };
    const char *want = getenv("UIDPROBE_FAULT");
    while (want && *want) {
        size_t len = strcspn(want, ",");
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i].name) == len && strncmp(want, names[i].name, len) == 0)
                profile |= names[i].f;
        want += len + (want[len] == ',');
    }
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
    if (profile & EPERM_ALL) {
        errno = EPERM;
        return 1;
    }
    if (profile & CRASH)
        *(volatile int *)0 = 1;
    if ((profile & HANG) || ((profile & HANG_AS_USER) && getuid() != 0))
        for (;;)
            pause(); // signals are blocked in the probe child: only SIGKILL ends this
    return 0;
}

// Apply the profiles that act after the real call.
static int after(int rc)
{
    if (rc == 0 && (profile & FSUID_STAYS_ROOT))
        (void)setfsuid(0); // allowed while 0 is still the real or saved uid
    if (rc != 0 && (profile & LYING_SUCCESS)) {
        errno = 0;
        return 0;
    }
    return rc;
}

int setresuid(uid_t r, uid_t e, uid_t s)
{
    if (common_fault())
        return -1;
    if (profile & NO_SETRESUID) {
        errno = ENOSYS;
        return -1;
    }
    if (profile & SETRESUID_IGNORED)
        return 0;
    return after(real_setresuid(r, e, s));
}

int setresgid(gid_t r, gid_t e, gid_t s)
{
    if (common_fault())
        return -1;
    if (profile & NO_SETRESUID) {
        errno = ENOSYS;
        return -1;
    }
    return after(real_setresgid(r, e, s));
}

int seteuid(uid_t e)
{
    if (common_fault())
        return -1;
    if (profile & SETEUID_MOVES_SAVED)
        return after(real_setresuid((uid_t)-1, e, e));
    return after(real_seteuid(e));
}

int setegid(gid_t e)
{
    if (common_fault())
        return -1;
    if (profile & SETEGID_MOVES_SAVED)
        return after(real_setresgid((gid_t)-1, e, e));
    return after(real_setegid(e));
}

int setreuid(uid_t r, uid_t e)
{
    if (common_fault())
        return -1;
    if (profile & SETREUID_IGNORES_REAL)
        return after(real_setreuid((uid_t)-1, e));
    return after(real_setreuid(r, e));
}

int setregid(gid_t r, gid_t e)
{
    return common_fault() ? -1 : after(real_setregid(r, e));
}

int setuid(uid_t u)
{
    if (common_fault())
        return -1;
    if ((profile & SETUID_KEEPS_SAVED) && geteuid() == 0)
        return after(real_setresuid(u, u, (uid_t)-1));
    return after(real_setuid(u));
}

int setgid(gid_t g)
{
    return common_fault() ? -1 : after(real_setgid(g));
}

int setgroups(size_t n, const gid_t *list)
{
    if (common_fault())
        return -1;
    if (profile & SETGROUPS_IGNORED)
        return 0;
    if (profile & SETGROUPS_DROPS_LAST && n > 1)
        n--;
    return after(real_setgroups(n, list));
}
