# cython: language_level=3
"""xensr's callout: runs the save/restore helper and speaks its protocol.

A :class:`Callout` owns one helper process and everything that connects to
it: the reply pipe (the helper's stdin), the frame pipe (its stdout), a
pidfd that becomes readable when it exits, the frame buffer, the queue of
replies not yet written, and the helper's last log lines.  It never blocks:
the caller's event loop tells it when an fd is ready.  What the frames
*mean* (callbacks, logging, results) is the business of the handler object
passed to :meth:`Callout.on_readable` (for an operation, its
``xensr.api._Messages``), driven by the message table: a request or
progress report goes to the callback registered with
:meth:`Callout.set_direct`, else to ``handler.msg_<name>(*args)`` (looked
up on the handler's class once, not per frame), else gets the table's
default reply; once :meth:`Callout.stop_callbacks` was called, requests get
the table's failure reply.  Other frames go to ``handler.msg_<name>``.
Log frames are kept raw for :attr:`Callout.log_tail` and formatted only
when it is read.

Layout: ``_xc.pxd`` declares the class's fields and the C structs it is
built from (the log ring, the spawn plan); ``_msgs.pxi`` (generated from
the message table) and ``_wire.pxi`` (the fixed wire format) are included
here.  Spawning keeps the parent's preparation, the fork-exec and the
child's report apart; the fork-exec is vfork + execve (``_spawn.h``; see
there for why).
"""

cimport cython
from libc.errno cimport EAGAIN, EBADF, ECHILD, EINTR, ENOSYS, ESRCH, errno
from libc.signal cimport SIGKILL
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcpy, memmove
from posix.fcntl cimport F_GETFL, F_SETFL, O_NONBLOCK, fcntl
from posix.signal cimport siginfo_t
from posix.types cimport pid_t
from posix.unistd cimport close, getpid, read, write
from posix.wait cimport P_PID, WEXITED, WNOHANG, waitid

from cpython.exc cimport PyErr_CheckSignals
from cpython.long cimport PyLong_AsLongLong
from cpython.object cimport Py_TPFLAGS_HAVE_GC
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM

from ._libc cimport (
    CLD_DUMPED,
    CLD_EXITED,
    CLD_KILLED,
    CLOCK_MONOTONIC,
    F_DUPFD_CLOEXEC,
    O_CLOEXEC,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLNVAL,
    POLLOUT,
    PyLong_AsLongLongAndOverflow,
    clock_gettime,
    environ,
    pipe2,
    poll,
    pollfd,
    timespec,
)
from ._spawn cimport (
    XENSR_SPAWN_STAGE_DUP2,
    XENSR_SPAWN_STAGE_EXEC,
    XENSR_SPAWN_STAGE_FDFLAGS,
    xensr_pidfd_open,
    xensr_pidfd_send_signal,
    xensr_spawn,
    xensr_sigpipe_ignored,
    xensr_spawn_t,
    xensr_write_nosigpipe,
)

cdef extern from "Python.h":
    # A type's allocator, which Cython's PyTypeObject does not declare
    # (for _as_struct).
    ctypedef struct _AllocType "PyTypeObject":
        PyObject *(*tp_alloc)(_AllocType *tp, Py_ssize_t nitems)
    int PyObject_GC_IsTracked(object o)
    void PyObject_GC_Track(object o)

import os
import signal as _signal
import types as _types
import warnings

from ._constants import XTL_LEVEL_NAMES
from .errors import (
    HelperStartError,
    ProtocolError,
    RuntFrameError,
    TruncatedFrameError,
    UnexpectedCallbackError,
)

# The table's message numbers, per-type arrays and decoders (generated).
include "_msgs.pxi"

cdef enum:
    # Room for a whole maximum frame after any partial one.
    BUF_SIZE = 2 * FRAME_SIZE_MAX
    # Reads per readiness call before giving the loop back (log floods).
    MAX_READS = 4
    # Reads ahead (see _read_loop): the default per on_readable call
    # (Callout.read_ahead), serve()'s per poll (its loop is its own) as a
    # multiple of it, the chances let pass after one that found nothing.
    READ_AHEAD = 8
    SERVE_AHEAD_FACTOR = 4
    AHEAD_BACKOFF = 8
    # log_levels: the bit for xentoollog levels above the table's.
    LOG_OTHER_BIT = XTL_LEVEL_COUNT

_STAGES = {
    XENSR_SPAWN_STAGE_DUP2: "cannot set up the helper's stdin/stdout",
    XENSR_SPAWN_STAGE_FDFLAGS: "cannot pass the io fd to the helper",
    XENSR_SPAWN_STAGE_EXEC: "cannot execute helper",
}


def format_log_line(level, errnoval, context, formatted):
    """One helper log frame as text: ``level: context: text[: strerror]``."""
    if 0 <= level < len(XTL_LEVEL_NAMES):
        name = XTL_LEVEL_NAMES[level]
    else:
        name = f"level{level}"
    line = f"{name}: {context}: {formatted}"
    # The wire's errno is a u32; xentoollog's is an int (-1: none).  A
    # helper may send any value (-EINVAL as 0xFFFFFFEA): each must format.
    if errnoval >= 0x80000000:
        errnoval -= 0x100000000
    if errnoval > 0:
        try:
            line += f": {os.strerror(errnoval)}"
        except (ValueError, OverflowError):
            line += f": errno {errnoval}"
    elif errnoval < -1:
        line += f": errno {errnoval}"
    return line


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int _bad_frame(const unsigned char *body, Py_ssize_t n, int direction) except -1:
    """Raise the generated decoder's error for a body the checks refused."""
    _decode_body(body, n, direction)
    raise ProtocolError("malformed frame", offset=0)


# ----------------------------------------------------------------------
# Replies: a callback's return value -> the int the helper reads, by the
# message's reply mapping in the table (MAP_*).  The one implementation:
# the callout's fast path and the Python API (xensr.callbacks) both use it.

cdef enum:
    REPLY_REFUSED = 0   # the message's mapping does not take the value
    REPLY_OK = 1        # the reply is in *out
    REPLY_WIDE = 2      # an int too wide for a C int (refused, said so)


cdef int _map_value(int msgtype, object value, int *out) except -1:
    """The reply for what the callback of message msgtype returned.

    MAP_BOOL: bool -> 1/0; an int passes through (COLO: 2 = failover).
    MAP_STATUS: None/True -> 0 (done), False -> -1; an int passes through.
    MAP_ENUM: an int among the reply group's values (not a bool).
    """
    cdef int kind = _reply_map(msgtype)
    cdef long long x
    cdef int overflow = 0
    if kind == MAP_STATUS:
        if value is None or value is True:
            out[0] = 0
            return REPLY_OK
        if value is False:
            out[0] = -1
            return REPLY_OK
    elif kind == MAP_ENUM:
        if value is True or value is False:
            return REPLY_REFUSED
    elif kind != MAP_BOOL:
        return REPLY_REFUSED
    if not isinstance(value, int):
        return REPLY_REFUSED
    x = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or x < -0x80000000 or x > 0x7fffffff:
        return REPLY_REFUSED if kind == MAP_ENUM else REPLY_WIDE
    if kind == MAP_ENUM and not _reply_min(msgtype) <= x <= _reply_max(msgtype):
        return REPLY_REFUSED
    out[0] = <int>x
    return REPLY_OK


def map_reply(int msgtype, value):
    """The int sent to the helper for what the callback of message msgtype
    returned; TypeError / ValueError for a value its mapping refuses."""
    cdef int reply
    cdef int r = _map_value(msgtype, value, &reply)
    if r == REPLY_OK:
        return reply
    name = _name_of(msgtype)
    if r == REPLY_WIDE:
        raise ValueError(f"{name}() returned {value!r}, which does not fit "
                         "the helper's reply (a C int)")
    kind = _reply_map(msgtype)
    if kind == MAP_BOOL:
        raise TypeError(f"{name}() must return a bool, not {type(value).__name__}")
    if kind == MAP_STATUS:
        raise TypeError(
            f"{name}() must return None or a bool, not {type(value).__name__}")
    if kind == MAP_ENUM:
        what = _REPLY_ENUM_NAMES[msgtype]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}() must return an {what} int, not {type(value).__name__}")
        raise ValueError(f"{name}() returned {value!r}, not an {what} value")
    raise ValueError(f"{name} takes no reply from a callback")


cdef inline bint _plain_reply(object v) noexcept:
    """A value whose reply the callout works out itself, without Python."""
    return type(v) is int or v is True or v is False or v is None


cdef bint _struct_class(wrap):
    """A class that tuple.__new__ takes (a subclass of tuple that allows
    it: not a structseq such as os.stat_result)."""
    if not (isinstance(wrap, type) and issubclass(wrap, tuple)):
        return False
    try:
        tuple.__new__(wrap, ())
    except TypeError:
        return False
    return True


cdef object _as_struct(type wrap, tuple args):
    """tuple.__new__(wrap, args) for a _struct_class, as tuple's own
    constructor makes it for a subclass (the class's allocator, then the
    items, then tracked by the GC), without looking up, packing and
    parsing a call."""
    cdef Py_ssize_t i, n = len(args)
    cdef _AllocType *tp = <_AllocType *>wrap
    cdef PyObject *p
    if wrap is tuple:
        return args
    p = tp.tp_alloc(tp, n)
    if p == NULL:
        raise MemoryError()
    s = <object>p
    Py_DECREF(s)        # <object> took a reference of its own
    for i in range(n):
        x = args[i]
        Py_INCREF(x)
        PyTuple_SET_ITEM(s, i, x)
    if (<type>wrap).__flags__ & Py_TPFLAGS_HAVE_GC and not PyObject_GC_IsTracked(s):
        PyObject_GC_Track(s)
    return s


cdef int _make_pipe(int *fds) except -1:
    """pipe2(O_CLOEXEC), both ends moved to fds >= 3.

    An end that landed on 0-2 (the application closed one of them) would be
    clobbered by the child's dup2 onto 0/1, or, dup2'ed onto itself, keep
    its close-on-exec flag and vanish at exec.
    """
    cdef int i, nfd
    if pipe2(fds, O_CLOEXEC) < 0:
        fds[0] = fds[1] = -1
        raise OSError(errno, f"pipe2: {os.strerror(errno)}")
    for i in range(2):
        if fds[i] < 3:
            nfd = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)
            if nfd < 0:
                raise OSError(errno, f"fcntl(F_DUPFD_CLOEXEC): {os.strerror(errno)}")
            close(fds[i])
            fds[i] = nfd
    return 0


cdef int _dup_high(int fd) except -1:
    """A close-on-exec duplicate of fd numbered >= 3 (docs/protocol.md §3: io fds 0-2)."""
    cdef int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3)
    if nfd < 0:
        raise OSError(errno, f"fcntl({fd}, F_DUPFD_CLOEXEC): {os.strerror(errno)}")
    return nfd


cdef int _set_nonblock(int fd) except -1:
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0 or fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        raise OSError(errno, f"fcntl({fd}, F_SETFL): {os.strerror(errno)}")
    return 0


cdef int _getfl(int fd, str what) except? -2:
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0:
        err = errno
        raise OSError(err, f"{what} {fd}: {os.strerror(err)}")
    return flags


cdef list _env_entries(env):
    """env (an iterable of bytes-like ``NAME=value``) checked, as bytes."""
    cdef list out = []
    cdef bytes b
    cdef const char *p
    cdef Py_ssize_t n
    for e in env:
        b = e if type(e) is bytes else bytes(e)
        p = b
        n = len(b)
        if memchr(p, 0, n) != NULL or memchr(p, 61, n) == NULL:   # NUL, '='
            raise ValueError(f"invalid environment entry {b!r}")
        out.append(b)
    return out


cdef char **_cstrv(list items) except NULL:
    """A NULL-terminated char* array pointing into the bytes in items."""
    cdef Py_ssize_t i, n = len(items)
    cdef char **v = <char **>malloc((n + 1) * sizeof(char *))
    if v == NULL:
        raise MemoryError()
    for i in range(n):
        v[i] = <char *>(<bytes>items[i])
    v[n] = NULL
    return v


# ----------------------------------------------------------------------
# Spawning (SpawnPlan in _xc.pxd): the parent's preparation, the fork-exec
# (_spawn.h's xensr_spawn, not inlined), the child's error report.

cdef void _plan_init(SpawnPlan *plan) noexcept:
    plan.reply_pipe[0] = plan.reply_pipe[1] = -1
    plan.frame_pipe[0] = plan.frame_pipe[1] = -1
    plan.error_pipe[0] = plan.error_pipe[1] = -1
    plan.io_child = plan.back_child = -1
    plan.argv = plan.envp = NULL


cdef tuple _plan_prepare(SpawnPlan *plan, bytes bpath, bytes bmode, int io_fd,
                         int back_fd, args, env):
    """The parent's work: pipes, the fds as the child gets them, argv and
    envp.  Returns the bytes objects argv/envp point into."""
    # Reply pipe.  [0], read end: the helper's stdin (dup2'ed onto fd 0 in
    # the child only).  [1], write end: ours, the replies; non-blocking.
    _make_pipe(plan.reply_pipe)
    # Frame pipe.  [0], read end: ours, the frames; non-blocking.  [1],
    # write end: the helper's stdout (fd 1 in the child only).
    _make_pipe(plan.frame_pipe)
    # Error pipe.  [0], read end: ours, non-blocking, read once after the
    # spawn.  [1], write end: the child's, stays close-on-exec so that a
    # successful execve closes it.
    _make_pipe(plan.error_pipe)
    _set_nonblock(plan.reply_pipe[1])
    _set_nonblock(plan.frame_pipe[0])
    _set_nonblock(plan.error_pipe[0])

    plan.io_child = io_fd if io_fd > 2 else _dup_high(io_fd)
    if back_fd < 0 or back_fd > 2:
        plan.back_child = back_fd
    else:
        plan.back_child = _dup_high(back_fd)

    argl = [bpath, bmode, b"%d" % plan.io_child, b"%d" % plan.back_child]
    argl += [b"%d" % a for a in args]
    plan.argv = _cstrv(argl)
    envl = None
    if env is not None:
        envl = _env_entries(env)
        plan.envp = _cstrv(envl)
    return (argl, envl)


cdef pid_t _fork_exec(SpawnPlan *plan, bytes bpath, path) except -1:
    """vfork + execve the helper (without the GIL); then close the child's
    ends here at once, so that EOF on the frame pipe means it is gone."""
    cdef xensr_spawn_t sp
    cdef pid_t pid
    cdef int err
    sp.path = bpath
    sp.argv = plan.argv
    sp.envp = plan.envp if plan.envp != NULL else environ
    sp.stdin_fd = plan.reply_pipe[0]
    sp.stdout_fd = plan.frame_pipe[1]
    sp.keep_fd[0] = plan.io_child
    sp.keep_fd[1] = plan.back_child
    sp.err_fd = plan.error_pipe[1]
    with nogil:
        pid = xensr_spawn(&sp)
    if pid < 0:
        err = errno
        raise HelperStartError(err, f"cannot start the helper: {os.strerror(err)}", path)
    close(plan.reply_pipe[0])
    plan.reply_pipe[0] = -1
    close(plan.frame_pipe[1])
    plan.frame_pipe[1] = -1
    close(plan.error_pipe[1])
    plan.error_pipe[1] = -1
    return pid


cdef int _read_report(SpawnPlan *plan, pid_t pid, path) except -1:
    """Raise HelperStartError (and reap the child) if it reported a failure.

    vfork returns once the child has exec'd or exited.  A child that failed
    wrote its report (8 bytes: one atomic pipe write) before _exit, so it
    is there now; after a successful execve the read finds nothing (EAGAIN)
    or EOF.  A blocking read would wait for the exec'd child to close its
    close-on-exec fds, which the kernel does after waking us.
    """
    cdef int report[2]
    cdef Py_ssize_t r, got = 0
    cdef int err
    while True:
        r = read(plan.error_pipe[0], <char *>report, sizeof(report))
        if r < 0 and errno == EINTR:
            continue
        break
    if r > 0:
        got = r
    if not got:
        return 0
    with nogil:
        _reap_blocking(pid)
    if got == sizeof(report):
        err = report[1]
        what = _STAGES.get(report[0], "cannot start the helper")
    else:
        err = 5  # EIO: a torn report
        what = "cannot start the helper (truncated error report)"
    raise HelperStartError(err, f"{what}: {os.strerror(err)}", path)


cdef int _open_pidfd(pid_t pid, path) except -1:
    """A pidfd for the helper; without one it is killed and reaped."""
    cdef int err
    cdef int pidfd = xensr_pidfd_open(pid)
    if pidfd < 0:
        err = errno
        os.kill(pid, _signal.SIGKILL)
        with nogil:
            _reap_blocking(pid)
        need = " (Linux >= 5.3 needed)" if err == ENOSYS else ""
        raise HelperStartError(err, f"pidfd_open failed{need}: {os.strerror(err)}", path)
    return pidfd


cdef void _plan_release(SpawnPlan *plan, int io_fd, int back_fd) noexcept:
    """Free argv/envp; close every fd the plan still holds and the
    duplicates made for the child."""
    cdef int i
    free(plan.argv)
    free(plan.envp)
    plan.argv = plan.envp = NULL
    for i in range(2):
        if plan.reply_pipe[i] >= 0:
            close(plan.reply_pipe[i])
        if plan.frame_pipe[i] >= 0:
            close(plan.frame_pipe[i])
        if plan.error_pipe[i] >= 0:
            close(plan.error_pipe[i])
        plan.reply_pipe[i] = plan.frame_pipe[i] = plan.error_pipe[i] = -1
    if plan.io_child >= 0 and plan.io_child != io_fd:
        close(plan.io_child)
    if plan.back_child >= 0 and plan.back_child != back_fd:
        close(plan.back_child)
    plan.io_child = plan.back_child = -1


# ----------------------------------------------------------------------
# Callout.watch's bits
cdef enum:
    BIT_READ = 1
    BIT_WRITE = 2
    BIT_EXIT = 4
    BIT_PARTIAL = 8


# ----------------------------------------------------------------------
# serve()'s poll set

cdef enum:
    WATCH_FRAMES = 0        # the frame pipe, while frames are expected
    WATCH_REPLIES = 1       # the reply pipe, while replies wait
    WATCH_EXIT = 2          # the pidfd, until the helper is reaped


cdef inline int _poll_set(Callout co, pollfd *fds, int *at) noexcept:
    """Fill fds with what co watches now, at[WATCH_*] with the positions
    (-1: not watched); return how many."""
    cdef int n = 0
    at[WATCH_FRAMES] = at[WATCH_REPLIES] = at[WATCH_EXIT] = -1
    if co._reading and co._stdout_r >= 0:
        fds[n].fd = co._stdout_r
        fds[n].events = POLLIN
        at[WATCH_FRAMES] = n
        n += 1
    if co._wbuf and co._stdin_w >= 0:
        fds[n].fd = co._stdin_w
        fds[n].events = POLLOUT
        at[WATCH_REPLIES] = n
        n += 1
    if not co.reaped and co._pidfd >= 0:
        fds[n].fd = co._pidfd
        fds[n].events = POLLIN
        at[WATCH_EXIT] = n
        n += 1
    return n


# ----------------------------------------------------------------------
# The log ring (LogRing in _xc.pxd)

cdef int _ring_init(LogRing *ring, Py_ssize_t size) except -1:
    ring.entries = <LogEntry *>calloc(size, sizeof(LogEntry))
    if ring.entries == NULL:
        raise MemoryError()
    ring.size = size
    ring.count = 0
    ring.oldest = 0
    return 0


cdef int _ring_put(LogRing *ring, const unsigned char *body, Py_ssize_t n) except -1:
    """Keep a copy of body, dropping the oldest entry once full."""
    cdef LogEntry *e
    cdef unsigned char *p
    if ring.count < ring.size:
        e = &ring.entries[ring.count]
        ring.count += 1
    else:
        e = &ring.entries[ring.oldest]
        ring.oldest = (ring.oldest + 1) % ring.size
    if e.capacity < n:
        p = <unsigned char *>realloc(e.data, n)
        if p == NULL:
            raise MemoryError()
        e.data = p
        e.capacity = n
    memcpy(e.data, body, n)
    e.length = n
    return 0


cdef inline const LogEntry *_ring_at(const LogRing *ring, Py_ssize_t k) noexcept:
    """The k-th oldest entry (0 <= k < count)."""
    return &ring.entries[(ring.oldest + k) % ring.count]


cdef void _ring_free(LogRing *ring) noexcept:
    cdef Py_ssize_t i
    if ring.entries != NULL:
        for i in range(ring.size):
            free(ring.entries[i].data)
    free(ring.entries)
    ring.entries = NULL
    ring.count = ring.size = ring.oldest = 0


cdef int _reap_blocking(pid_t pid) noexcept nogil:
    """Wait for pid to exit (it has been killed or is exiting)."""
    cdef siginfo_t info
    while waitid(P_PID, pid, &info, WEXITED) < 0:
        if errno != EINTR:
            return -1
    return 0


cdef class Callout:
    """One helper process and its two pipes.

    Life cycle: ``Callout(direction, cbflags)`` -> :meth:`spawn` -> the
    caller watches :attr:`stdout_fd` (readable, while :attr:`reading`),
    :attr:`stdin_fd` (writable, while :attr:`wants_write`) and
    :attr:`pidfd` (readable once the helper exited) and calls
    :meth:`on_readable`, :meth:`on_writable` and :meth:`poll_exit` ->
    :meth:`close` once :meth:`poll_exit` returned True.
    """

    def __cinit__(self):
        self.pid = -1
        self._pidfd = -1
        self._stdin_w = -1
        self._stdout_r = -1
        self._io_dup = -1
        self._io_flags = -1
        self._back_dup = -1
        self._back_flags = -1
        self._wbuf = b""
        self._buf = <unsigned char *>malloc(BUF_SIZE)
        self._counts = <unsigned long long *>calloc(MSG_SLOTS, sizeof(unsigned long long))
        if self._buf == NULL or self._counts == NULL:
            raise MemoryError()

    def __init__(self, int direction, unsigned cbflags, int log_tail=20):
        if direction != DIR_SAVE and direction != DIR_RESTORE:
            raise ValueError(f"direction must be DIR_SAVE or DIR_RESTORE, not {direction}")
        if log_tail < 1:
            raise ValueError("log_tail must be at least 1")
        self.direction = direction
        self.cbflags = cbflags
        if self._ring.entries == NULL:
            _ring_init(&self._ring, log_tail)
        self._bound = [None] * MSG_SLOTS
        self._direct = [None] * MSG_SLOTS
        self._wrap = [None] * MSG_SLOTS
        self.log_levels = 0xffffffffu
        self.progress_wanted = True
        self.read_ahead = READ_AHEAD
        self._reading = True

    # ------------------------------------------------------------------
    # Spawn

    def spawn(self, path, mode, int io_fd, int back_fd, args, env=None):
        """Start the helper; return its pid.

        argv is ``[path, mode, IO_FD, BACK_FD, *args]`` (docs/protocol.md §2); io/back fds
        0-2 are passed as close-on-exec duplicates >= 3, made inheritable in
        the child only.  ``env``: None to inherit ``environ``, else a list
        of ``b"NAME=value"``.  O_NONBLOCK is cleared on the io and back fds
        until :meth:`close`.  Raises HelperStartError (with the errno of
        the failed step) when the helper could not be executed.

        The parent's work (_plan_prepare), the fork-exec (_fork_exec, in C,
        without the GIL) and reading the child's report (_read_report) are
        kept apart, as CPython's _posixsubprocess does.
        """
        cdef SpawnPlan plan
        cdef int io_flags, back_flags = -1
        cdef pid_t pid
        cdef bint ok = False

        if self.pid != -1 or self._closed:
            raise RuntimeError("this Callout has already run a helper")
        if back_fd < -1:
            raise ValueError(f"back-channel fd must be -1 or an fd, not {back_fd}")
        if io_fd < 0:
            raise ValueError(f"io fd must be an fd, not {io_fd}")
        bpath = os.fsencode(path)
        if not bpath or b"\0" in bpath:
            raise ValueError(f"invalid helper path {path!r}")
        bmode = os.fsencode(mode)
        io_flags = _getfl(io_fd, "io fd")
        if back_fd >= 0:
            back_flags = _getfl(back_fd, "back-channel fd")

        _plan_init(&plan)
        self._owner = getpid()
        self._sigpipe_ignored = xensr_sigpipe_ignored()
        try:
            # The bytes argv/envp point into: alive until the exec is done.
            try:
                keep = _plan_prepare(&plan, bpath, bmode, io_fd, back_fd, args, env)
                self._take_fds(io_fd, io_flags, back_fd, back_flags)
            except HelperStartError:
                raise
            except OSError as exc:   # out of fds (EMFILE/ENFILE), mostly
                raise HelperStartError(
                    exc.errno, f"cannot start the helper: {exc.strerror}", path) from exc
            pid = _fork_exec(&plan, bpath, path)
            _read_report(&plan, pid, path)
            self._pidfd = _open_pidfd(pid, path)
            self.pid = pid
            self._stdin_w = plan.reply_pipe[1]
            plan.reply_pipe[1] = -1
            self._stdout_r = plan.frame_pipe[0]
            plan.frame_pipe[0] = -1
            self._reading = True
            ok = True
            del keep
            return pid
        finally:
            _plan_release(&plan, io_fd, back_fd)
            if not ok:
                self._restore_flags()

    cdef int _take_fds(self, int io_fd, int io_flags, int back_fd,
                       int back_flags) except -1:
        """libxenguest does blocking I/O on the io and back-channel fds:
        clear O_NONBLOCK on them; close() gives their flags back, through
        a duplicate kept meanwhile (the caller's fd number may by then
        name another file)."""
        if io_flags & O_NONBLOCK:
            self._io_dup = _dup_high(io_fd)
            self._io_flags = io_flags
            fcntl(io_fd, F_SETFL, io_flags & ~O_NONBLOCK)
        if back_fd >= 0 and back_flags & O_NONBLOCK:
            self._back_dup = _dup_high(back_fd)
            self._back_flags = back_flags
            fcntl(back_fd, F_SETFL, back_flags & ~O_NONBLOCK)
        return 0

    cdef bint _owned(self) noexcept:
        """True in the process that spawned the helper.  A child forked
        meanwhile holds copies of the fds and the pidfd, but the helper
        and the open files' flags are its parent's business."""
        return self._owner == getpid()

    # ------------------------------------------------------------------
    # Frames

    def on_readable(self, handler):
        """Read and dispatch the frames available on the helper's stdout.

        Never blocks.  Returns True when more data may be waiting right
        now (the read limit per call was hit: call again, or let the loop
        come back), False when the pipe is drained or at EOF.  Raises a
        ProtocolError (and stops reading) on a malformed frame or EOF in
        the middle of a frame; an exception from the handler propagates
        with the frame consumed.

        After frames whose reply was written at once, it reads again (up
        to :attr:`read_ahead` times) without waiting to be told: the
        helper often runs as soon as the reply wakes it, and has its next
        frame written before the parent is back in its loop.
        """
        return self._read_loop(handler, MAX_READS, False, self.read_ahead)

    def drain(self, handler):
        """Once the helper exited: read and dispatch up to EOF.

        Stops early (without EOF) only if the pipe is empty but still has
        a writer, i.e. something the helper started holds its stdout.
        """
        self._read_loop(handler, 0, True, 0)

    cdef bint _read_loop(self, handler, int max_reads, bint until_empty,
                         int max_ahead) except? True:
        """Read and parse: until EAGAIN/EOF with until_empty, else until a
        read leaves the pipe drained (False) or max_reads reads filled the
        buffer (True).  A drained read whose frames got their reply written
        at once is followed by one more read, max_ahead times at most
        (True once they are used up): a read ahead.  One that finds
        nothing lets the next AHEAD_BACKOFF chances pass, so that a helper
        slower to answer costs few reads that find nothing."""
        cdef Py_ssize_t r, space
        cdef int loops = 0, ahead = 0, err
        cdef bint guessed = False
        if not self._reading or self._stdout_r < 0:
            return False
        if self._in_parse:
            raise RuntimeError("Callout.on_readable re-entered from a handler")
        while True:
            space = BUF_SIZE - self._len
            r = read(self._stdout_r, self._buf + self._len, space)
            if r < 0:
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    if guessed:
                        self._ahead_skip = AHEAD_BACKOFF
                    return False
                self._reading = False
                raise ProtocolError(f"reading the helper's stdout failed: {os.strerror(err)}")
            if r == 0:
                self._at_eof()
                return False
            self._len += r
            self._replied = False
            self._parse(handler, r)
            if not self._reading:
                return False
            if until_empty:
                continue
            if r == space:
                guessed = False
                loops += 1
                if loops >= max_reads:
                    return True
                continue
            # Drained.  Read ahead only for a reply just written whole
            # (not one deferred, nor one the pipe did not take).
            if not self._replied or self._wbuf:
                return False
            if ahead >= max_ahead:
                return max_ahead > 0
            if self._ahead_skip:
                self._ahead_skip -= 1
                return False
            ahead += 1
            guessed = True

    def feed(self, handler, data, bint eof=False):
        """Process bytes as if read from the helper's stdout (for tests)."""
        cdef const unsigned char[::1] view = data
        cdef Py_ssize_t off = 0, n = view.shape[0], chunk
        if self._in_parse:
            raise RuntimeError("Callout.feed re-entered from a handler")
        while off < n and self._reading:
            chunk = min(n - off, BUF_SIZE - self._len)
            memcpy(self._buf + self._len, &view[off], chunk)
            self._len += chunk
            off += chunk
            self._parse(handler, chunk)
        if eof and self._reading:
            self._at_eof()

    cdef int _at_eof(self) except -1:
        cdef uint16_t blen
        self._reading = False
        self.eof = True
        if self._len == 1:
            raise TruncatedFrameError(
                "the helper's stdout ended in the middle of a frame header "
                "(1 of 2 bytes)", offset=0)
        if self._len >= 2:
            memcpy(&blen, self._buf, 2)
            raise TruncatedFrameError(
                f"the helper's stdout ended in the middle of a frame "
                f"({self._len - 2} of {blen} body bytes)", offset=self._len - 2)
        return 0

    cdef Py_ssize_t _parse(self, handler, Py_ssize_t fresh) except -1:
        """Dispatch the whole frames in the buffer (its last ``fresh`` bytes
        just arrived); keep the rest and note when it began to arrive."""
        cdef Py_ssize_t pos = 0, avail
        cdef bint was_empty = self._len == fresh
        cdef uint16_t blen
        self._in_parse = True
        try:
            while self._reading:
                avail = self._len - pos
                if avail < 2:
                    break
                memcpy(&blen, self._buf + pos, 2)
                if blen < 2:
                    raise RuntFrameError(
                        f"frame announces a body of {blen} bytes, too short "
                        "for a message type", offset=0)
                if avail - 2 < blen:
                    break
                pos += 2 + blen
                self._frame(handler, self._buf + pos - blen, blen)
        except ProtocolError:
            self._reading = False
            raise
        finally:
            self._in_parse = False
            if pos:
                memmove(self._buf, self._buf + pos, self._len - pos)
                self._len -= pos
            # An incomplete frame whose first bytes came now starts the
            # clock of the frame timeout; one still growing keeps its start.
            if self._len == 0:
                self.partial_since = 0.0
            elif was_empty or pos:
                self.partial_since = _monotonic()
        return pos

    cdef int _frame(self, handler, const unsigned char *body, Py_ssize_t n) except -1:
        cdef uint16_t t16
        cdef int t, role, kind
        memcpy(&t16, body, 2)
        t = t16
        role = _role(t)
        if role == ROLE_LOG:
            return self._log_frame(handler, t, body, n)
        if role == ROLE_PROGRESS and not self.progress_wanted:
            # Checked in C and counted, not decoded: nobody wants it.
            self._check_raw(t, body, n)
            self.frames += 1
            self._counts[t] += 1
            return 0
        msgtype, args = _decode_body(body, n, self.direction)
        kind = _reply_kind(t)
        self._check_expected(t, kind)
        self.frames += 1
        self._counts[t] += 1
        # libxenguest asks twice per precopy round, the second time with
        # dirty_count (argument 2) -1: a round is a question with a count.
        if t == MSG_PRECOPY_POLICY and PyLong_AsLongLong(args[2]) != -1:
            self.precopy_rounds += 1
        if role == ROLE_COMPLETE:
            # As libxl: nothing after complete is read.
            self.completed = True
            self.retval = args[COMPLETE_ARG_RETVAL]
            self.errnoval = args[COMPLETE_ARG_ERRNOVAL]
            self._reading = False
        if kind:
            self.awaiting = t
        ret = self._deliver(handler, t, role, args)
        if kind and ret is not None and self.awaiting == t:
            self._reply(ret)
        return 0

    cdef int _log_frame(self, handler, int t, const unsigned char *body,
                        Py_ssize_t n) except -1:
        """Checked in C, kept raw; decoded only if the handler wants it."""
        cdef uint32_t level
        self._check_raw(t, body, n)
        self.frames += 1
        self.log_lines += 1
        self._counts[t] += 1
        _ring_put(&self._ring, body, n)
        memcpy(&level, body + LOG_LEVEL_OFFSET, 4)
        if not (self.log_levels & (1u << (level if level < LOG_OTHER_BIT else LOG_OTHER_BIT))):
            return 0
        self._call(handler, t, _decode_body(body, n, self.direction)[1])
        return 0

    cdef int _check_raw(self, int t, const unsigned char *body, Py_ssize_t n) except -1:
        """A frame handled without decoding must still be one the decoder
        accepts; raise the decoder's error if not."""
        if not ((_directions(t) >> self.direction) & 1 and _check_body(t, body, n)):
            _bad_frame(body, n, self.direction)
        return 0

    cdef int _check_expected(self, int t, int kind) except -1:
        """A callback whose cbflags bit is clear, or a second request while
        one waits for its reply, is a protocol error."""
        cdef unsigned bit = _cbflag_bit(t)
        if bit and not (self.cbflags & bit):
            name = _name_of(t)
            raise UnexpectedCallbackError(
                f"{name} message (type {t}) arrived but its cbflags bit "
                f"({bit:#x}) was not set (cbflags {self.cbflags:#x})",
                msgtype=t, msgname=name, offset=0)
        if kind and self.awaiting:
            name = _name_of(t)
            raise ProtocolError(
                f"{name} message (type {t}) asks for a reply while the reply "
                f"to {_name_of(self.awaiting)} is still outstanding",
                msgtype=t, msgname=name, offset=0)
        return 0

    cdef object _deliver(self, handler, int t, int role, tuple args):
        """A decoded frame: the one way it reaches the toolstack.

        A request's or progress report's direct callback (set_direct) if
        there is one, else the handler's msg_<name>, else the table's
        default reply.  Once stop_callbacks() was called, requests get the
        table's failure reply (an undo still reaches its callback) and
        progress is dropped.
        """
        cdef int undo
        if self._callbacks_stopped and (role == ROLE_REQUEST or role == ROLE_PROGRESS):
            if role == ROLE_PROGRESS:
                return None
            undo = _undo_arg(t)
            if undo < 0 or args[undo] != 0:
                return _failure_reply(t)
        fn = self._direct[t]
        if fn is not None:
            return self._call_direct(handler, t, fn, args)
        if (_has_default(t) and self._method(handler, t) is None
                and not hasattr(handler, "msg_" + _NAMES[t])):
            return _default_reply(t)
        return self._call(handler, t, args)

    cdef object _method(self, handler, int t):
        """The handler class's msg_<name> function, or None."""
        tp = type(handler)
        if tp is not self._bound_type:
            self._bind(tp)
        return self._bound[t]

    cdef object _call(self, handler, int t, tuple args):
        """handler.msg_<name>(*args), through the class's function."""
        fn = self._method(handler, t)
        if fn is None:
            return _dispatch(handler, t, args)
        return fn(handler, *args)

    cdef int _bind(self, tp) except -1:
        cdef int t
        bound = [None] * MSG_SLOTS
        for t in range(1, MSG_SLOTS):
            # Only plain functions of the class: anything else (__getattr__,
            # descriptors) goes through getattr for each frame.
            fn = getattr(tp, "msg_" + _NAMES[t], None)
            if type(fn) is _types.FunctionType:
                bound[t] = fn
        self._bound = bound
        self._bound_type = tp
        return 0

    cdef object _call_direct(self, handler, int t, fn, tuple args):
        """Call the set_direct callback with the arguments as the table
        presents them; map the common returns to the reply here, hand
        anything else to handler.direct_result."""
        cdef unsigned as_bool = _bool_args(t)
        cdef int i, reply
        wrap = self._wrap[t]
        if wrap is not None:
            s = _as_struct(<type>wrap, args)
            try:
                v = fn(s)
            except Exception as exc:
                return handler.direct_failed(t, exc)
        else:
            if as_bool:
                a = list(args)
                for i in range(len(a)):
                    if (as_bool >> i) & 1:
                        a[i] = a[i] != 0
            else:
                a = args
            try:
                v = fn(*a)
            except Exception as exc:
                return handler.direct_failed(t, exc)
        if _plain_reply(v):
            if _reply_map(t) == MAP_NONE:
                if v is None:
                    return None
            elif _map_value(t, v, &reply) == REPLY_OK:
                return reply
        return handler.direct_result(t, v)

    def set_direct(self, int msgtype, fn, wrap=None):
        """Call ``fn`` itself for frames of msgtype (progress or a request)
        instead of ``handler.msg_<name>``.

        ``fn`` gets the message's arguments, those the table presents as
        bool as bool; with ``wrap`` (a tuple subclass), a message whose
        table row has a struct_class gets one ``wrap`` of them all.  A
        return of None (progress), or a bool, None or an int that the
        message's reply mapping takes (requests) is the reply; anything
        else goes to ``handler.direct_result(msgtype, value)`` and an
        Exception to ``handler.direct_failed(msgtype, exc)``, which return
        the reply or None.  ``fn=None`` removes it.
        """
        cdef int role = _role(msgtype)
        if role != ROLE_REQUEST and role != ROLE_PROGRESS:
            raise ValueError(f"message type {msgtype} cannot have a direct callback")
        if fn is not None and not callable(fn):
            raise TypeError("the direct callback must be callable")
        if (fn is not None and wrap is not None and _struct_args(msgtype)
                and not _struct_class(wrap)):
            raise TypeError(f"wrap must be a class derived from tuple, not {wrap!r}")
        self._direct[msgtype] = fn
        self._wrap[msgtype] = wrap if fn is not None and _struct_args(msgtype) else None

    def clear_direct(self):
        """Remove every direct callback: frames go to the handler again."""
        self._direct = [None] * MSG_SLOTS
        self._wrap = [None] * MSG_SLOTS

    def stop_callbacks(self):
        """From now on, answer requests with the table's failure reply
        without asking anyone (an undo, e.g. switch_qemu_logdirty with
        enable 0, still reaches its callback) and drop progress reports:
        the operation is stopping and libxenguest must unwind."""
        self._callbacks_stopped = True

    @property
    def type_counts(self):
        """Frames received so far by message type (index = type, 0 unused)."""
        return tuple(self._counts[i] for i in range(MSG_SLOTS))

    @property
    def partial_length(self):
        """Bytes of an incomplete frame waiting in the buffer."""
        return self._len

    @property
    def log_tail(self):
        """The helper's last log lines, oldest first, as text."""
        cdef Py_ssize_t k
        cdef const LogEntry *e
        out = []
        for k in range(self._ring.count):
            e = _ring_at(&self._ring, k)
            out.append(format_log_line(*_decode_body(e.data, e.length, self.direction)[1]))
        return tuple(out)

    # ------------------------------------------------------------------
    # The blocking loop

    def wake(self):
        """Make :meth:`serve` return (2) at its next wake-up."""
        self._wake = True

    def serve(self, handler, double until, bint stamp=False):
        """Watch the helper's fds with poll() and handle what is ready, in C,
        until something needs the caller: a blocking event loop of its own
        for callers that have none (:meth:`xensr.Operation.run`).

        Dispatches frames to ``handler`` as :meth:`on_readable` (with
        SERVE_AHEAD_FACTOR times as many reads ahead before the next
        poll), writes pending replies as :meth:`on_writable`.  Returns 0 once
        ``time.monotonic()`` reaches ``until``, 1 when the pidfd is readable
        (call :meth:`poll_exit`), 2 after :meth:`wake`, 3 when there is
        nothing to watch.  With ``stamp``, :attr:`last_read_at` is set after
        each read that brought frames.  Exceptions (ProtocolError, a
        handler's) propagate; the GIL is released while it waits, and a
        signal's Python handler runs (and may raise) on EINTR.
        """
        cdef pollfd fds[3]
        # Where in fds the frame pipe, the reply pipe and the pidfd are (-1: not watched).
        cdef int at[3]
        cdef int n, r, ms
        cdef unsigned long long frames
        cdef double now
        if self._in_parse:
            raise RuntimeError("Callout.serve called from a handler")
        while True:
            if self._wake:
                self._wake = False
                return 2
            n = _poll_set(self, fds, at)
            if n == 0:
                return 3
            now = _monotonic()
            if now >= until:
                return 0
            if until - now > 3600.0:
                ms = 3600000
            else:
                ms = <int>((until - now) * 1000.0) + 1
            with nogil:
                r = poll(fds, n, ms)
            if r < 0:
                err = errno
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                raise OSError(err, f"poll: {os.strerror(err)}")
            if r == 0:
                continue
            if at[WATCH_REPLIES] >= 0 and fds[at[WATCH_REPLIES]].revents:
                self._flush()
            if at[WATCH_FRAMES] >= 0 and fds[at[WATCH_FRAMES]].revents:
                frames = self.frames
                self._read_loop(handler, MAX_READS, False,
                                SERVE_AHEAD_FACTOR * self.read_ahead)
                if stamp and self.frames != frames:
                    self.last_read_at = _monotonic()
            if at[WATCH_EXIT] >= 0 and fds[at[WATCH_EXIT]].revents:
                return 1

    # ------------------------------------------------------------------
    # Replies

    def send_reply(self, value):
        """Queue the reply to the outstanding request and write it.

        Never blocks: what the pipe does not take now is written by
        :meth:`on_writable`.  Returns True when everything was written.
        """
        cdef int32_t v
        if not self.awaiting:
            raise RuntimeError("no helper request is waiting for a reply")
        data = _encode_reply(value)
        self.awaiting = 0
        memcpy(&v, <const char *>data, 4)
        return self._write_int(v)

    def on_writable(self):
        """Write pending replies; True when none is left."""
        return self._flush()

    cdef int _reply(self, value) except -1:
        """Answer the request being dispatched with what _deliver returned:
        an int that fits is written straight from C, anything else goes
        through the checks of send_reply."""
        cdef long long x
        cdef int overflow = 0
        cdef int32_t v
        if type(value) is int:
            x = PyLong_AsLongLongAndOverflow(value, &overflow)
            if not overflow and -0x80000000 <= x <= 0x7fffffff:
                self.awaiting = 0
                self._write_int(<int32_t>x)
                return 0
        data = _encode_reply(value)
        self.awaiting = 0
        memcpy(&v, <const char *>data, 4)
        self._write_int(v)
        return 0

    cdef bint _write_int(self, int32_t v) except? False:
        """Write one reply, or queue it behind what the pipe has not taken
        yet; True when nothing is left to write."""
        cdef Py_ssize_t r
        cdef int err
        if self._stdin_w < 0 or self.stdin_broken:
            return False
        if self._wbuf:
            self._wbuf += (<char *>&v)[:4]
            return self._flush()
        while True:
            r = self._write_reply(<const char *>&v, 4)
            if r == 4:
                self._replied = True
                return True
            if r >= 0:
                # Part of it (a pipe takes 4 bytes whole: not expected).
                self._wbuf = (<char *>&v)[r:4]
                return self._flush()
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                self._wbuf = (<char *>&v)[:4]
                return False
            # EPIPE: the helper is gone; its exit status says why.
            self.stdin_broken = True
            return False

    cdef bint _flush(self) except? False:
        cdef Py_ssize_t r
        cdef const char *p
        cdef int err
        while self._wbuf:
            p = self._wbuf
            r = self._write_reply(p, len(self._wbuf))
            if r < 0:
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    return False
                # EPIPE: the helper is gone; its exit status says why.
                self.stdin_broken = True
                self._wbuf = b""
                return False
            self._wbuf = self._wbuf[r:]
        return True

    cdef Py_ssize_t _write_reply(self, const char *p, Py_ssize_t n) noexcept:
        """write() that turns a vanished reader into EPIPE, never SIGPIPE
        (_spawn.h); a plain write() if SIGPIPE was ignored at spawn."""
        if self._sigpipe_ignored:
            return write(self._stdin_w, p, n)
        return xensr_write_nosigpipe(self._stdin_w, p, n)

    # ------------------------------------------------------------------
    # Exit and signals

    def poll_exit(self):
        """Reap the helper if it has exited (never blocks); True once reaped."""
        cdef siginfo_t info
        cdef int r
        if self.reaped:
            return True
        if self.pid < 0:
            return False
        info.si_pid = 0
        r = waitid(P_PID, self.pid, &info, WEXITED | WNOHANG)
        if r < 0:
            err = errno
            if err == EINTR:
                return False
            if err == ECHILD:
                self.reaped = True
                self.status_lost = True
                return True
            raise OSError(err, f"waitid({self.pid}): {os.strerror(err)}")
        if info.si_pid == 0:
            return False
        self._set_status(&info)
        return True

    cdef void _set_status(self, siginfo_t *info):
        self.reaped = True
        if info.si_code == CLD_EXITED:
            self.returncode = info.si_status
        elif info.si_code == CLD_KILLED or info.si_code == CLD_DUMPED:
            self.returncode = -info.si_status
            self.core_dumped = info.si_code == CLD_DUMPED
        else:
            self.returncode = None
            self.status_lost = True

    def send_signal(self, int sig):
        """Send sig through the pidfd; False if the helper is already gone
        (or this is a forked child of the process that spawned it)."""
        if self.pid < 0 or self.reaped or self._pidfd < 0 or not self._owned():
            return False
        if xensr_pidfd_send_signal(self._pidfd, sig) < 0:
            err = errno
            # ESRCH: already exited.  EBADF: closed by a close() racing
            # with an abort() from another thread.
            if err == ESRCH or err == EBADF:
                return False
            raise OSError(err, f"pidfd_send_signal({self.pid}, {sig}): {os.strerror(err)}")
        return True

    def kill_and_reap(self):
        """SIGKILL the helper and wait for it (blocks briefly)."""
        cdef siginfo_t info
        cdef pid_t pid = self.pid
        cdef int r
        if pid < 0 or self.reaped or not self._owned():
            return
        self.send_signal(_signal.SIGKILL)
        with nogil:
            while True:
                r = waitid(P_PID, pid, &info, WEXITED)
                if r == 0 or errno != EINTR:
                    break
        if r < 0:
            self.reaped = True
            self.status_lost = True
        else:
            self._set_status(&info)

    def stop_reading(self):
        """Stop reading frames (after an error, or when giving up)."""
        self._reading = False

    # ------------------------------------------------------------------
    # fds and teardown

    @property
    def reading(self):
        """True while frames are still expected on :attr:`stdout_fd`."""
        return self._reading and self._stdout_r >= 0

    @property
    def wants_write(self):
        """True while replies wait for :attr:`stdin_fd` to become writable."""
        return bool(self._wbuf) and self._stdin_w >= 0

    @property
    def watch(self):
        """What an event loop watches now, as bits: 1 :attr:`reading`,
        2 :attr:`wants_write`, 4 not :attr:`reaped`, 8 an incomplete frame
        waits (:attr:`partial_since` set, a frame deadline).  One int, so
        that a loop can tell cheaply whether handling frames changed any
        of them."""
        cdef int bits = 0
        if self._reading and self._stdout_r >= 0:
            bits |= BIT_READ
        if self._wbuf and self._stdin_w >= 0:
            bits |= BIT_WRITE
        if not self.reaped:
            bits |= BIT_EXIT
        if self.partial_since != 0.0:
            bits |= BIT_PARTIAL
        return bits

    @property
    def stdout_fd(self):
        return self._stdout_r

    @property
    def stdin_fd(self):
        return self._stdin_w

    @property
    def pidfd(self):
        return self._pidfd

    @property
    def closed(self):
        return self._closed

    cdef void _restore_flags(self):
        """Give the io and back-channel files their O_NONBLOCK back (only
        in the spawning process: a forked child's close must not change
        files its parent's helper is using) and drop the duplicates."""
        cdef bint owned = self._owned()
        if self._io_dup >= 0:
            if owned:
                fcntl(self._io_dup, F_SETFL, self._io_flags)
            close(self._io_dup)
        if self._back_dup >= 0:
            if owned:
                fcntl(self._back_dup, F_SETFL, self._back_flags)
            close(self._back_dup)
        self._io_dup = self._back_dup = -1
        self._io_flags = self._back_flags = -1

    cdef void _close_fds(self):
        if self._stdin_w >= 0:
            close(self._stdin_w)
            self._stdin_w = -1
        if self._stdout_r >= 0:
            close(self._stdout_r)
            self._stdout_r = -1
        if self._pidfd >= 0:
            close(self._pidfd)
            self._pidfd = -1
        self._wbuf = b""
        self._reading = False

    def close(self):
        """Release the pipes and the pidfd and restore the io fd's flags.

        A helper still running is killed (SIGKILL) and reaped first, but
        only by the process that spawned it: in a child forked meanwhile,
        close() (and dropping the Callout) only closes the child's copies.
        """
        if self._closed:
            return
        if self.pid >= 0 and not self.reaped and self._owned():
            self.kill_and_reap()
        self._close_fds()
        self._restore_flags()
        self._closed = True

    def __dealloc__(self):
        cdef pid_t pid = self.pid
        cdef Py_ssize_t i
        if pid >= 0 and not self.reaped and self._owned():
            if self._pidfd >= 0:
                xensr_pidfd_send_signal(self._pidfd, SIGKILL)
            with nogil:
                _reap_blocking(pid)
            try:
                warnings.warn(
                    f"xensr helper [{pid}] was still running when its "
                    "Callout was dropped; killed it", ResourceWarning)
            except BaseException:
                pass
        self._close_fds()
        self._restore_flags()
        free(self._buf)
        self._buf = NULL
        free(self._counts)
        self._counts = NULL
        _ring_free(&self._ring)
