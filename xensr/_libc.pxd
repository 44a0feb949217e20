# libc declarations Cython's bundled posix/*.pxd do not have.
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
