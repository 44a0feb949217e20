# Declarations for xensr/_spawn.h (vfork + execve spawn, pidfd calls).

from posix.types cimport pid_t


cdef extern from "_spawn.h" nogil:
    ctypedef struct xensr_spawn_t:
        const char *path
        # char *const * in C; Cython only needs to assign to them.
        char **argv
        char **envp
        int stdin_fd
        int stdout_fd
        int keep_fd[2]
        int err_fd

    enum:
        XENSR_SPAWN_STAGE_DUP2
        XENSR_SPAWN_STAGE_FDFLAGS
        XENSR_SPAWN_STAGE_EXEC

    pid_t xensr_spawn(const xensr_spawn_t *sp)
    int xensr_pidfd_open(pid_t pid)
    int xensr_pidfd_send_signal(int pidfd, int sig)
    ssize_t xensr_write_nosigpipe(int fd, const void *buf, size_t n)
    int xensr_sigpipe_ignored()
