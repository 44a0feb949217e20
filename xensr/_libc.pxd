# libc and CPython declarations Cython's bundled *.pxd do not have (or, for
# the close-on-exec flags and PyLong_AsLongLongAndOverflow, not before
# Cython 3.0: declared here, the extension builds with Debian 12's 0.29).
# (_GNU_SOURCE comes from pyconfig.h, which Python.h includes first.)

cdef extern from "<unistd.h>" nogil:
    int pipe2(int pipefd[2], int flags)
    char **environ


cdef extern from "<signal.h>" nogil:
    # siginfo_t.si_code values for SIGCHLD / waitid.
    enum:
        CLD_EXITED
        CLD_KILLED
        CLD_DUMPED


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLNVAL


cdef extern from "<time.h>" nogil:
    # CLOCK_MONOTONIC is time.monotonic()'s clock on Linux.
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
    int clock_gettime(int clk_id, timespec *tp)


cdef extern from "<fcntl.h>" nogil:
    enum:
        O_CLOEXEC
        F_DUPFD_CLOEXEC


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object vv, int *overflow) except? -1
