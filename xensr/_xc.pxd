# The callout's layout: what a Callout holds, and the C-level pieces it is
# built from (the log ring, the spawn plan).  The code is in _xc.pyx.

cimport cython
from libc.stdint cimport int32_t
from posix.signal cimport siginfo_t
from posix.types cimport pid_t


# The helper's last log frames, raw (bodies), formatted only when read:
# a ring of ``size`` slots whose buffers are kept and grown, never shrunk.
cdef struct LogEntry:
    unsigned char *data
    Py_ssize_t length
    Py_ssize_t capacity

cdef struct LogRing:
    LogEntry *entries
    Py_ssize_t size         # slots
    Py_ssize_t count        # slots in use (<= size)
    Py_ssize_t oldest       # the oldest entry once the ring is full


# Everything the parent prepares before the fork-exec, so that the child
# only calls async-signal-safe functions on memory that is ready.
cdef struct SpawnPlan:
    int reply_pipe[2]       # [0]: the helper's stdin; [1]: ours, replies
    int frame_pipe[2]       # [0]: ours, frames; [1]: the helper's stdout
    int error_pipe[2]       # [0]: ours, the child's report; [1]: the child's
    int io_child            # the io fd as the child gets it (>= 3)
    int back_child          # the back-channel fd as the child gets it, or -1
    char **argv
    char **envp


@cython.final
cdef class Callout:
    """One helper process and its two pipes (see _xc.pyx)."""

    cdef readonly int direction
    cdef readonly unsigned cbflags
    cdef readonly pid_t pid
    # The process that spawned the helper: the only one that may signal,
    # reap or hand back the io fd's flags (a forked child has copies).
    cdef pid_t _owner
    cdef int _pidfd
    cdef int _stdin_w
    cdef int _stdout_r
    # Frames read but not yet parsed.
    cdef unsigned char *_buf
    cdef Py_ssize_t _len
    # Replies not yet written.
    cdef bytes _wbuf
    # A reply was written whole while the last read's frames were parsed.
    cdef bint _replied
    # Read-ahead chances to let pass after one that found nothing
    # (_read_loop).
    cdef int _ahead_skip
    cdef bint _reading
    cdef bint _in_parse
    cdef bint _closed
    # Duplicates of the io and back-channel fds whose O_NONBLOCK was
    # cleared (-1: untouched) and the flags to give back at close(): set
    # through a duplicate, they reach the same open file even if the
    # caller closed its fd and the number was reused.
    cdef int _io_dup
    cdef int _io_flags
    cdef int _back_dup
    cdef int _back_flags
    # SIGPIPE was ignored when the helper was spawned (Python's default):
    # replies are then written plainly, without blocking it around each
    # write (two system calls per reply saved).
    cdef bint _sigpipe_ignored
    cdef LogRing _ring
    # The handler's class and its msg_<name> functions by message type.
    cdef object _bound_type
    cdef list _bound
    # Callbacks called directly (set_direct) by message type, and the
    # class their arguments are wrapped in (struct-presented messages).
    cdef list _direct
    cdef list _wrap
    cdef bint _callbacks_stopped
    # Frames received by message type (MSG_SLOTS entries).
    cdef unsigned long long *_counts
    cdef bint _wake

    #: Bit N set: log frames of xentoollog level N are handed to the
    #: handler (bit XTL_LEVEL_COUNT: levels above the table's).  The others
    #: are only kept for :attr:`log_tail` and counted.
    cdef public unsigned log_levels
    #: False: progress frames are checked and counted, not handed on.
    cdef public bint progress_wanted
    #: Reads ahead per on_readable() call after a reply written at once
    #: (0: none); serve() makes SERVE_AHEAD_FACTOR times as many per poll.
    cdef public int read_ahead
    #: time.monotonic() after the last read that brought a frame, when
    #: :meth:`serve` was asked to keep it.
    cdef readonly double last_read_at

    #: Message type waiting for a reply (0: none).
    cdef readonly int awaiting
    #: The helper's stdout ended.
    cdef readonly bint eof
    #: ``complete`` was received; retval/errnoval are its arguments.
    cdef readonly bint completed
    cdef readonly int retval
    cdef readonly int errnoval
    #: The helper was reaped; returncode as in subprocess (-N: signal N).
    cdef readonly bint reaped
    cdef readonly object returncode
    cdef readonly bint core_dumped
    #: Someone else reaped the helper (waitid said ECHILD).
    cdef readonly bint status_lost
    #: A reply could not be written: the helper's stdin is closed.
    cdef readonly bint stdin_broken
    cdef readonly unsigned long long frames
    cdef readonly unsigned long long log_lines
    #: precopy_policy frames with a dirty count (not -1): the rounds.
    cdef readonly unsigned long long precopy_rounds
    #: time.monotonic() when the first bytes of the frame still incomplete
    #: in the buffer arrived (0.0: no incomplete frame).
    cdef readonly double partial_since

    # Spawn
    cdef int _take_fds(self, int io_fd, int io_flags, int back_fd,
                       int back_flags) except -1
    cdef bint _owned(self) noexcept
    # Frames
    cdef bint _read_loop(self, handler, int max_reads, bint until_empty,
                         int max_ahead) except? True
    cdef int _at_eof(self) except -1
    cdef Py_ssize_t _parse(self, handler, Py_ssize_t fresh) except -1
    cdef int _frame(self, handler, const unsigned char *body, Py_ssize_t n) except -1
    cdef int _log_frame(self, handler, int t, const unsigned char *body,
                        Py_ssize_t n) except -1
    cdef int _check_raw(self, int t, const unsigned char *body, Py_ssize_t n) except -1
    cdef int _check_expected(self, int t, int kind) except -1
    cdef object _deliver(self, handler, int t, int role, tuple args)
    cdef object _method(self, handler, int t)
    cdef object _call(self, handler, int t, tuple args)
    cdef int _bind(self, tp) except -1
    cdef object _call_direct(self, handler, int t, fn, tuple args)
    # Replies, exit, teardown
    cdef int _reply(self, value) except -1
    cdef bint _write_int(self, int32_t v) except? False
    cdef bint _flush(self) except? False
    cdef Py_ssize_t _write_reply(self, const char *p, Py_ssize_t n) noexcept
    cdef void _set_status(self, siginfo_t *info)
    cdef void _restore_flags(self)
    cdef void _close_fds(self)
