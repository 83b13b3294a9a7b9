/*
 * System calls made without the C library.
 *
 * The kernel read-back must not go through any function an LD_PRELOAD
 * library can interpose: not getresuid(), and not syscall() either (it is an
 * ordinary exported symbol).  Where this header knows the architecture's
 * system call convention (x86_64, aarch64, i386, s390x) the call is made with
 * the instruction itself; elsewhere syscall() is the best there is, and a
 * preloaded root process can be lied to there (documented).  The numbers are
 * the kernel's own (<sys/syscall.h>: SYS_* from <asm/unistd.h>), so each
 * architecture gets its own.
 *
 * The x86_64 and aarch64 paths pass every argument in a 64-bit register as
 * a `long`: they are chosen only where long and pointers are 64 bits
 * (__LP64__).  x32 (__x86_64__ with __ILP32__) and aarch64's ILP32 have the
 * instruction but not that model: they take syscall().
 * tests/test_c_portability.py checks the choice with each compiler's own
 * predefined macros (-m64, -m32, -mx32).
 *
 * up_sys() returns what the kernel returns: a value >= 0, or -errno.
 * Async-signal-safe: no state, no errno.
 */
#ifndef UIDPROBE_RAWSYS_H
#define UIDPROBE_RAWSYS_H

#ifdef __linux__
#include <errno.h>
#include <sched.h> // clone(), CLONE_* (with _GNU_SOURCE, which the includer defines)
#include <sys/syscall.h>

#if defined(__x86_64__) && defined(__LP64__)
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
#elif defined(__aarch64__) && defined(__LP64__)
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
#elif defined(__i386__)
#define UP_RAW_SYSCALLS 1
// int $0x80: every x86 kernel has it (and a 64-bit one running 32-bit
// programs), without the vDSO entry the C library looks up.  Arguments in
// ebx, ecx, edx, esi, edi; the result in eax.
static inline long up_sys(long n, long a, long b, long c, long d, long e)
{
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "0"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                     : "memory");
    return ret;
}
#elif defined(__s390x__)
#define UP_RAW_SYSCALLS 1
// svc 0 with the number in r1 (any number, not only those below 256);
// arguments in r2-r6, the result in r2.
static inline long up_sys(long n, long a, long b, long c, long d, long e)
{
    register long r1 __asm__("r1") = n;
    register long r2 __asm__("r2") = a;
    register long r3 __asm__("r3") = b;
    register long r4 __asm__("r4") = c;
    register long r5 __asm__("r5") = d;
    register long r6 __asm__("r6") = e;
    __asm__ volatile("svc 0" : "+d"(r2) : "d"(r1), "d"(r3), "d"(r4), "d"(r5), "d"(r6) : "memory", "cc");
    return r2;
}
#else
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
#define UP_SYS_SETRESUID SYS_setresuid32
#define UP_SYS_SETRESGID SYS_setresgid32
#define UP_SYS_SETGROUPS SYS_setgroups32
#else
#define UP_SYS_GETRESUID SYS_getresuid
#define UP_SYS_GETRESGID SYS_getresgid
#define UP_SYS_SETFSUID SYS_setfsuid
#define UP_SYS_SETFSGID SYS_setfsgid
#define UP_SYS_GETGROUPS SYS_getgroups
#define UP_SYS_SETRESUID SYS_setresuid
#define UP_SYS_SETRESGID SYS_setresgid
#define UP_SYS_SETGROUPS SYS_setgroups
#endif

// A thread of this process: the C library's clone() with CLONE_THREAD and
// the rest, on a stack the caller provides.  The new thread runs fn(arg)
// and then exits (that thread only).  clone() is the system call with the
// architecture's register dance around it, and nothing else: no lock, no
// allocation, unlike pthread_create, so it may be called in a forked child
// of a multithreaded process.  The C library does not know the thread: no
// TLS of its own (it shares the caller's TLS pointer, so fn must not touch
// errno or any thread-local state), and no pthread_* call may name it.
// Every Linux architecture and C library has clone(); qemu-user turns it
// into a host thread with its own credentials.  Returns the thread id, or
// -errno.
#define UP_CLONE_THREAD_FLAGS \
    (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM)

static inline long up_clone_thread(void *stack_top, int (*fn)(void *), void *arg)
{
    int saved = errno;
    long r = clone(fn, (void *)((unsigned long)stack_top & ~15UL), UP_CLONE_THREAD_FLAGS, arg);
    if (r == -1) {
        r = -errno;
        errno = saved;
    }
    return r;
}
#endif /* __linux__ */

#endif
