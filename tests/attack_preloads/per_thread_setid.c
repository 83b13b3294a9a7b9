/* A C library whose set*id calls change only the calling thread (no setxid broadcast). */
#define _GNU_SOURCE 1
#include <unistd.h>
#include <sys/syscall.h>
#include <grp.h>
#include <errno.h>
static long r3(long n, long a, long b, long c) { long ret; __asm__ volatile ("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory"); if (ret < 0 && ret > -4096) { errno = -ret; return -1; } return ret; }
#include <errno.h>
int setresuid(uid_t r, uid_t e, uid_t s) { return r3(SYS_setresuid, r, e, s); }
int setresgid(gid_t r, gid_t e, gid_t s) { return r3(SYS_setresgid, r, e, s); }
int setreuid(uid_t r, uid_t e) { return r3(SYS_setreuid, r, e, 0); }
int setregid(gid_t r, gid_t e) { return r3(SYS_setregid, r, e, 0); }
int setuid(uid_t u) { return r3(SYS_setuid, u, 0, 0); }
int setgid(gid_t g) { return r3(SYS_setgid, g, 0, 0); }
int seteuid(uid_t e) { return r3(SYS_setresuid, -1, e, -1); }
int setegid(gid_t e) { return r3(SYS_setresgid, -1, e, -1); }
int setgroups(size_t n, const gid_t *l) { return r3(SYS_setgroups, n, (long)l, 0); }
