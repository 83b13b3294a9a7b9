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
#include <errno.h>
#include <sched.h> // CLONE_* (with _GNU_SOURCE, which the includer defines)
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

// A thread of this process, started without the C library: clone() with
// CLONE_THREAD and the rest, on a stack the caller provides.  The new
// thread runs fn(arg) and then SYS_exit (that thread only).  The C library
// does not know the thread: no TLS of its own (it shares the caller's TLS
// pointer, so fn must not touch errno or any thread-local state), and no
// pthread_* call may name it.  What makes this usable in a forked child of
// a multithreaded process, where pthread_create is not async-signal-safe:
// it is one system call.  Returns the thread id, or -errno; -ENOSYS where
// there is no system call instruction to use.
#define UP_CLONE_THREAD_FLAGS \
    (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM)

#if defined(__x86_64__)
#define UP_RAW_CLONE 1
static inline long up_clone_thread(void *stack_top, void (*fn)(void *), void *arg)
{
    long ret;
    // fn and arg travel on the new stack: after the system call the child
    // has only that stack and the registers.
    void **sp = (void **)((unsigned long)stack_top & ~15UL);
    *--sp = arg;
    *--sp = (void *)fn;
    register long r10 __asm__("r10") = 0; // child_tid
    register long r8 __asm__("r8") = 0;   // tls
    __asm__ volatile("syscall\n\t"
                     "testq %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     // the new thread: rsp == sp
                     "xorl %%ebp, %%ebp\n\t"
                     "popq %%rax\n\t"
                     "popq %%rdi\n\t"
                     "callq *%%rax\n\t"
                     "movl %[nr_exit], %%eax\n\t"
                     "xorl %%edi, %%edi\n\t"
                     "syscall\n\t"
                     "hlt\n"
                     "1:\n\t"
                     : "=a"(ret)
                     : "0"((long)SYS_clone), "D"((long)UP_CLONE_THREAD_FLAGS), "S"(sp), "d"(0L), "r"(r10),
                       "r"(r8), [nr_exit] "i"(SYS_exit)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define UP_RAW_CLONE 1
static inline long up_clone_thread(void *stack_top, void (*fn)(void *), void *arg)
{
    register long x8 __asm__("x8") = SYS_clone;
    register long x0 __asm__("x0") = UP_CLONE_THREAD_FLAGS;
    register long x1 __asm__("x1") = (long)stack_top & ~15L;
    register long x2 __asm__("x2") = 0; // parent_tid
    register long x3 __asm__("x3") = 0; // tls
    register long x4 __asm__("x4") = 0; // child_tid
    // fn and arg travel in registers, which the new thread inherits.
    register long x9 __asm__("x9") = (long)fn;
    register long x10 __asm__("x10") = (long)arg;
    __asm__ volatile("svc 0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x29, xzr\n\t"
                     "mov x0, x10\n\t"
                     "blr x9\n\t"
                     "mov x8, %[nr_exit]\n\t"
                     "mov x0, xzr\n\t"
                     "svc 0\n"
                     "1:\n\t"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x9), "r"(x10), [nr_exit] "i"(SYS_exit)
                     : "memory", "cc");
    return x0;
}
#else
#define UP_RAW_CLONE 0
static inline long up_clone_thread(void *stack_top, void (*fn)(void *), void *arg)
{
    (void)stack_top, (void)fn, (void)arg;
    return -ENOSYS;
}
#endif
#endif /* __linux__ */

#endif
