/*
 * xensr/_spawn.h: start the save/restore helper with vfork + execve.
 *
 * Why not fork(): the toolstack "might be a very large process"; fork
 * copies its page tables, so its cost grows with the parent's resident
 * size.  vfork() shares the parent's memory until the child execs, so the
 * cost is constant.  The price is discipline in the child:
 *
 *   - everything (argv, envp, fd numbers) is prepared by the parent;
 *   - the child calls only async-signal-safe functions (sigaction,
 *     sigprocmask, dup2, fcntl, close_range via syscall, execve, write,
 *     _exit), touches no heap, and never returns from xensr_spawn_child();
 *   - all signals are blocked in the parent around vfork(), so no Python
 *     signal handler can run in the child on the parent's memory; the child
 *     resets caught signals to SIG_DFL before unblocking them (its
 *     dispositions are its own: vfork does not share the signal handler
 *     table).
 *
 * An exec failure is written to a close-on-exec error pipe as two ints
 * (stage, errno).  EOF with no data means the exec succeeded.
 */
#ifndef XENSR_SPAWN_H
#define XENSR_SPAWN_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* Stages reported through the error pipe. */
#define XENSR_SPAWN_STAGE_DUP2 1
#define XENSR_SPAWN_STAGE_FDFLAGS 2
#define XENSR_SPAWN_STAGE_EXEC 3

typedef struct {
    const char *path;       /* absolute or relative path of the helper */
    char *const *argv;      /* NULL-terminated */
    char *const *envp;      /* NULL-terminated */
    int stdin_fd;           /* reply pipe read end (>= 3): becomes fd 0 */
    int stdout_fd;          /* frame pipe write end (>= 3): becomes fd 1 */
    int keep_fd[2];         /* io fd, back-channel fd (>= 3, or -1) */
    int err_fd;             /* error pipe write end, close-on-exec */
} xensr_spawn_t;

static void __attribute__((noreturn))
xensr_spawn_fail(int err_fd, int stage, int err)
{
    int report[2] = { stage, err };
    ssize_t r;

    do {
        r = write(err_fd, report, sizeof(report));
    } while (r < 0 && errno == EINTR);
    _exit(127);
}

static void __attribute__((noreturn))
xensr_spawn_child(const xensr_spawn_t *sp)
{
    struct sigaction sa;
    sigset_t none;
    int sig, i, flags;

    /*
     * Caught signals back to SIG_DFL while everything is still blocked:
     * a handler of the parent must never run here.  SIGPIPE and SIGXFSZ,
     * which Python ignores, back to SIG_DFL too: the helper relies on
     * SIGPIPE to die when its parent vanished (ignored dispositions
     * survive execve).
     */
    for (sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, &sa) < 0)
            continue;           /* glibc-reserved real-time signals */
        if (sa.sa_handler == SIG_DFL)
            continue;
        if (sa.sa_handler == SIG_IGN && sig != SIGPIPE && sig != SIGXFSZ)
            continue;
        sa.sa_handler = SIG_DFL;
        sa.sa_flags = 0;
        sigemptyset(&sa.sa_mask);
        (void)sigaction(sig, &sa, NULL);
    }

    /*
     * Every fd from 3 up close-on-exec in this child's own fd table (vfork
     * does not share it): an fd the application left inheritable, or one
     * of a concurrent operation, never reaches this helper.  Best effort
     * on kernels without close_range (< 5.11), where xensr's own fds are
     * close-on-exec from birth anyway.
     */
    (void)syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);

    /* dup2 clears FD_CLOEXEC on the new fd; both sources are >= 3. */
    if (dup2(sp->stdin_fd, 0) < 0)
        xensr_spawn_fail(sp->err_fd, XENSR_SPAWN_STAGE_DUP2, errno);
    if (dup2(sp->stdout_fd, 1) < 0)
        xensr_spawn_fail(sp->err_fd, XENSR_SPAWN_STAGE_DUP2, errno);

    /* The io and back-channel fds: inheritable, in this child only. */
    for (i = 0; i < 2; i++) {
        if (sp->keep_fd[i] < 0)
            continue;
        flags = fcntl(sp->keep_fd[i], F_GETFD);
        if (flags < 0)
            xensr_spawn_fail(sp->err_fd, XENSR_SPAWN_STAGE_FDFLAGS, errno);
        if (fcntl(sp->keep_fd[i], F_SETFD, flags & ~FD_CLOEXEC) < 0)
            xensr_spawn_fail(sp->err_fd, XENSR_SPAWN_STAGE_FDFLAGS, errno);
    }

    /* The helper starts with no signal blocked (it unblocks SIGTERM
     * itself, but relies on SIGPIPE too). */
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);

    execve(sp->path, sp->argv, sp->envp);
    xensr_spawn_fail(sp->err_fd, XENSR_SPAWN_STAGE_EXEC, errno);
}

/*
 * Returns the child's pid, or -1 with errno set when no child was created.
 * Called without the GIL: it blocks until the child has exec'd or exited.
 * Never inlined (as CPython's do_fork_exec): the vfork child runs on this
 * function's frame, which must not be part of the caller's.
 */
static pid_t __attribute__((noinline))
xensr_spawn(const xensr_spawn_t *sp)
{
    sigset_t all, old;
    pid_t pid;
    int saved_errno, r;

    sigfillset(&all);
    r = pthread_sigmask(SIG_SETMASK, &all, &old);
    if (r) {
        errno = r;
        return -1;
    }

    pid = vfork();
    if (pid == 0)
        xensr_spawn_child(sp);  /* never returns */

    saved_errno = errno;
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved_errno;
    return pid;
}

/* Linux system calls without a glibc 2.36 wrapper in <unistd.h>. */
static int
xensr_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int
xensr_pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/*
 * write() to the reply pipe such that a helper gone away is EPIPE and
 * never SIGPIPE, whatever the process's SIGPIPE disposition (CLI tools
 * often reset it to the default action, which would kill the toolstack
 * with its helper).  Pipes have no MSG_NOSIGNAL: SIGPIPE is blocked in
 * this thread around the write, and the one the write queued is taken
 * back (sigtimedwait, no wait) before the old mask returns.  If the
 * caller had SIGPIPE blocked already, a SIGPIPE pending before the write
 * is the caller's and stays.
 */
/* SIGPIPE is ignored now (Python's default): a plain write() is safe. */
static int
xensr_sigpipe_ignored(void)
{
    struct sigaction sa;

    return sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO)
        && sa.sa_handler == SIG_IGN;
}

static ssize_t
xensr_write_nosigpipe(int fd, const void *buf, size_t n)
{
    static const struct timespec no_wait = { 0, 0 };
    sigset_t pipe_set, old, pending;
    int keep_pending = 0, err;
    ssize_t r;

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) != 0)
        return write(fd, buf, n);
    if (sigismember(&old, SIGPIPE) && sigpending(&pending) == 0)
        keep_pending = sigismember(&pending, SIGPIPE);
    r = write(fd, buf, n);
    err = errno;
    if (r < 0 && err == EPIPE && !keep_pending) {
        while (sigtimedwait(&pipe_set, NULL, &no_wait) < 0 && errno == EINTR)
            ;
    }
    if (!sigismember(&old, SIGPIPE))
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return r;
}

#endif /* XENSR_SPAWN_H */
