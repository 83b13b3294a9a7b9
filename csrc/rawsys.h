/*
 * System calls made without the C library.
 *
 * The kernel read-back must not go through any function an LD_PRELOAD
 * library can interpose: not getresuid(), and not syscall() either (it is an
 * ordinary exported symbol).  On x86_64 and aarch64 the call is made with the
 * instruction itself; elsewhere syscall() is the best there is, and a
 * preloaded root process can be lied to there (documented).
 *
 * up_sys() returns what the kernel returns: a value >= 0, or -errno.
 * Async-signal-safe: no state, no errno.
 */
#ifndef UIDPROBE_RAWSYS_H
#define UIDPROBE_RAWSYS_H

#ifdef __linux__
#include <sys/syscall.h>

#if defined(__x86_64__)
#define UP_RAW_SYSCALLS 1
static inline long up_sys(long n, long a, long b, long c, long d, long e)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define UP_RAW_SYSCALLS 1
static inline long up_sys(long n, long a, long b, long c, long d, long e)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory", "cc");
    return x0;
}
#else
#include <errno.h>
#include <unistd.h>
#define UP_RAW_SYSCALLS 0
static inline long up_sys(long n, long a, long b, long c, long d, long e)
{
    int saved = errno;
    long r = syscall(n, a, b, c, d, e);
    if (r == -1) {
        r = -errno;
        errno = saved;
    }
    return r;
}
#endif

// The 32-bit id calls on platforms that also have 16-bit ones.
#ifdef SYS_getresuid32
#define UP_SYS_GETRESUID SYS_getresuid32
#define UP_SYS_GETRESGID SYS_getresgid32
#define UP_SYS_SETFSUID SYS_setfsuid32
#define UP_SYS_SETFSGID SYS_setfsgid32
#define UP_SYS_GETGROUPS SYS_getgroups32
#else
#define UP_SYS_GETRESUID SYS_getresuid
#define UP_SYS_GETRESGID SYS_getresgid
#define UP_SYS_SETFSUID SYS_setfsuid
#define UP_SYS_SETFSGID SYS_setfsgid
#define UP_SYS_GETGROUPS SYS_getgroups
#endif
#endif /* __linux__ */

#endif
