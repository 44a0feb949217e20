/*
 * vg_pidfd.so: lets a parent that uses pidfds run under valgrind releases
 * that do not know pidfd_open (3.19, Debian 12's), for `python -m
 * benchmarks --only callcost`.  Preloaded into the parent (LD_PRELOAD),
 * it catches syscall(SYS_pidfd_open) and syscall(SYS_pidfd_send_signal),
 * which xensr's callout and Python's os.pidfd_open make through libc's
 * syscall(), and stands in for them with calls valgrind knows:
 *
 *   pidfd_open(pid)          a signalfd for SIGCHLD (SIGCHLD blocked,
 *                            pending ones dropped), readable once a child
 *                            exits; an eventfd already readable if pid has
 *                            exited.  Good for one child at a time.
 *   pidfd_send_signal(fd)    kill() of the pid that fd was opened for.
 *
 * Every other syscall() goes to libc's.  The stand-ins run as guest code,
 * so their instructions are counted like the real calls' libc wrappers.
 */

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 4096

static pid_t fd_pid[MAX_FD];

static long pidfd_open_standin(pid_t pid)
{
    sigset_t set;
    struct timespec zero = { 0, 0 };
    siginfo_t info;
    int fd;

    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    while (sigtimedwait(&set, NULL, &zero) > 0)
        ;
    info.si_pid = 0;
    if (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid)
        fd = eventfd(1, EFD_CLOEXEC);
    else
        fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd >= 0 && fd < MAX_FD)
        fd_pid[fd] = pid;
    return fd;
}

static long pidfd_send_signal_standin(int fd, int sig)
{
    if (fd < 0 || fd >= MAX_FD || !fd_pid[fd]) {
        errno = EBADF;
        return -1;
    }
    return kill(fd_pid[fd], sig);
}

long syscall(long nr, ...)
{
    static long (*next)(long, ...);
    va_list ap;
    long a[6];
    int i;

    va_start(ap, nr);
    for (i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (nr == SYS_pidfd_open)
        return pidfd_open_standin((pid_t)a[0]);
    if (nr == SYS_pidfd_send_signal)
        return pidfd_send_signal_standin((int)a[0], (int)a[1]);
    if (!next)
        next = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return next(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
