/* A lying C library that also interposes syscall(): set*id "succeed" and are
 * remembered in process memory; getres*id AND syscall(NR(getresuid)/...,
 * setfsuid(-1), ...) report the remembered ids.  The kernel ids never change.
 * LIAR_CAPS=1: capget through syscall() reports empty sets and capset does nothing.
 * Written by the adversarial review (branch attack); glibc.  The 32-bit id
 * calls where 16-bit ones also exist (i386). */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#include <stdlib.h>
#ifdef NR(getresuid)32
#define NR(call) SYS_##call##32
#else
#define NR(call) SYS_##call
#endif
static uid_t U[3]; static gid_t G[3]; static int init;
static long (*real_syscall)(long, ...);
static void ini(void) {
    if (init) return; init = 1;
    real_syscall = dlsym(RTLD_NEXT, "syscall");
    real_syscall(NR(getresuid), &U[0], &U[1], &U[2]);
    real_syscall(NR(getresgid), &G[0], &G[1], &G[2]);
}
#define KEEP(x, v) if ((v) != (typeof(v))-1) x = (v)
int setresuid(uid_t r, uid_t e, uid_t s) { ini(); if (U[1] != 0) { uid_t v[3] = {r, e, s}; for (int i = 0; i < 3; i++) if (v[i] != (uid_t)-1 && v[i] != U[0] && v[i] != U[1] && v[i] != U[2]) { errno = EPERM; return -1; } } KEEP(U[0], r); KEEP(U[1], e); KEEP(U[2], s); return 0; }
int setresgid(gid_t r, gid_t e, gid_t s) { ini(); if (U[1] != 0) { gid_t v[3] = {r, e, s}; for (int i = 0; i < 3; i++) if (v[i] != (gid_t)-1 && v[i] != G[0] && v[i] != G[1] && v[i] != G[2]) { errno = EPERM; return -1; } } KEEP(G[0], r); KEEP(G[1], e); KEEP(G[2], s); return 0; }
int seteuid(uid_t e) { return setresuid(-1, e, -1); }
int setegid(gid_t e) { return setresgid(-1, e, -1); }
int setreuid(uid_t r, uid_t e) { ini(); if (U[1] != 0 && ((r != (uid_t)-1 && r != U[0] && r != U[1]) || (e != (uid_t)-1 && e != U[0] && e != U[1] && e != U[2]))) { errno = EPERM; return -1; } uid_t o = U[0]; int rc = setresuid(r, e, -1); if (!rc && (r != (uid_t)-1 || (e != (uid_t)-1 && e != o))) U[2] = U[1]; return rc; }
int setregid(gid_t r, gid_t e) { ini(); if (U[1] != 0 && ((r != (gid_t)-1 && r != G[0] && r != G[1]) || (e != (gid_t)-1 && e != G[0] && e != G[1] && e != G[2]))) { errno = EPERM; return -1; } gid_t o = G[0]; int rc = setresgid(r, e, -1); if (!rc && (r != (gid_t)-1 || (e != (gid_t)-1 && e != o))) G[2] = G[1]; return rc; }
int setuid(uid_t u) { ini(); if (U[1] == 0) { U[0]=U[1]=U[2]=u; return 0; } if (u==U[0]||u==U[2]) {U[1]=u; return 0;} errno = EPERM; return -1; }
int setgid(gid_t g) { ini(); if (U[1] == 0) { G[0]=G[1]=G[2]=g; return 0; } if (g==G[0]||g==G[2]) {G[1]=g; return 0;} errno = EPERM; return -1; }
int getresuid(uid_t *r, uid_t *e, uid_t *s) { ini(); *r=U[0]; *e=U[1]; *s=U[2]; return 0; }
int getresgid(gid_t *r, gid_t *e, gid_t *s) { ini(); *r=G[0]; *e=G[1]; *s=G[2]; return 0; }
uid_t getuid(void) { ini(); return U[0]; } uid_t geteuid(void) { ini(); return U[1]; }
gid_t getgid(void) { ini(); return G[0]; } gid_t getegid(void) { ini(); return G[1]; }
long syscall(long n, ...) {
    va_list ap; va_start(ap, n);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long), d = va_arg(ap, long), e = va_arg(ap, long);
    va_end(ap);
    ini();
    if (getenv("LIAR_CAPS") && n == SYS_capget) { unsigned *d = (unsigned*)b; if (d) for (int i = 0; i < 6; i++) d[i] = 0; return 0; }
    if (getenv("LIAR_CAPS") && n == SYS_capset) return 0;
    if (n == NR(getresuid)) return getresuid((uid_t*)a, (uid_t*)b, (uid_t*)c);
    if (n == NR(getresgid)) return getresgid((gid_t*)a, (gid_t*)b, (gid_t*)c);
    if (n == NR(setfsuid) && (uid_t)a == (uid_t)-1) return U[1];
    if (n == NR(setfsgid) && (gid_t)a == (gid_t)-1) return G[1];
    return real_syscall(n, a, b, c, d, e);
}
