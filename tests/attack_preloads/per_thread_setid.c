/* A C library whose set*id calls change only the calling thread (no setxid
 * broadcast): each is the bare system call, which the kernel applies to the
 * calling thread alone.  The numbers are the kernel's (<sys/syscall.h>), the
 * 32-bit id calls where 16-bit ones also exist (i386). */
#define _GNU_SOURCE 1
#include <grp.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef SYS_setresuid32
#define NR(call) SYS_##call##32
#else
#define NR(call) SYS_##call
#endif
#define ID(x) ((long)(x))
int setresuid(uid_t r, uid_t e, uid_t s) { return (int)syscall(NR(setresuid), ID(r), ID(e), ID(s)); }
int setresgid(gid_t r, gid_t e, gid_t s) { return (int)syscall(NR(setresgid), ID(r), ID(e), ID(s)); }
int setreuid(uid_t r, uid_t e) { return (int)syscall(NR(setreuid), ID(r), ID(e)); }
int setregid(gid_t r, gid_t e) { return (int)syscall(NR(setregid), ID(r), ID(e)); }
int setuid(uid_t u) { return (int)syscall(NR(setuid), ID(u)); }
int setgid(gid_t g) { return (int)syscall(NR(setgid), ID(g)); }
int seteuid(uid_t e) { return (int)syscall(NR(setresuid), ID((uid_t)-1), ID(e), ID((uid_t)-1)); }
int setegid(gid_t e) { return (int)syscall(NR(setresgid), ID((gid_t)-1), ID(e), ID((gid_t)-1)); }
int setgroups(size_t n, const gid_t *l) { return (int)syscall(NR(setgroups), (long)n, l); }
