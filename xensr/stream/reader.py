"""Exact, bounded reading of a stream from a file descriptor.

Files, pipes and non-blocking fds alike: the reader knows the absolute
offset of the next byte (for error messages), reads only what the parser
asks for, and skips bodies without holding them.
"""

from __future__ import annotations

import os
import select as _select
import stat
from typing import List, Optional

from ..errors import StreamFormatError

#: Bytes read at a time when skipping or streaming a body (and the size of
#: the read-ahead buffer).
READ_CHUNK = 1 << 20


class StreamReader:
    """Reads a stream from a file descriptor and knows the byte offset.

    With ``readahead=False`` (the default) it issues ``os.read`` calls for
    exactly the bytes asked for and never consumes more, so the fd is left
    positioned precisely after the last byte parsed: a helper process
    inheriting the fd continues from there (also on pipes and sockets).
    With ``readahead=True`` it reads 1 MiB at a time into its own buffer,
    which is what ``inspect`` wants: small reads and :meth:`peek` cost a
    slice of that buffer; the fd position is then unspecified.

    ``offset`` is the absolute offset of the next byte.  For a seekable fd it
    starts at the fd's current position; for a pipe at the ``offset``
    argument (default 0).
    """

    def __init__(self, fd: int, *, offset: Optional[int] = None, readahead: bool = False):
        self.fd = fd
        st = os.fstat(fd)
        self._regular = stat.S_ISREG(st.st_mode)
        self._size = st.st_size if self._regular else None
        try:
            pos: Optional[int] = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            pos = None
        self.seekable = pos is not None and self._regular
        if self.seekable:
            assert pos is not None
            self.offset = pos
        else:
            self.offset = offset if offset is not None else 0
        self.readahead = readahead
        # Read-ahead buffer: bytes _buf[_pos:] are read but not consumed.
        # Without read-ahead it holds at most one byte pushed back by at_eof().
        self._buf = b""
        self._pos = 0

    def close(self) -> None:
        """Drops the read-ahead buffer (the fd itself stays open)."""
        self._buf = b""
        self._pos = 0

    # -- raw reading

    def _os_read(self, n: int) -> bytes:
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                pass
            # A non-blocking fd with nothing to read yet: wait for it.
            poller = _select.poll()
            poller.register(self.fd, _select.POLLIN)
            poller.poll()

    @property
    def _buffered(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the buffer, refilled first (read-ahead
        readers) when empty; b"" only at end of stream."""
        if not self._buffered:
            if not self.readahead:
                return self._os_read(n)
            self._buf, self._pos = self._os_read(READ_CHUNK), 0
        data = self._buf[self._pos:self._pos + n]
        self._pos += len(data)
        return data

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes, not consumed (read-ahead readers only);
        fewer only at end of stream."""
        if not self.readahead:
            raise RuntimeError("peek() needs a reader made with readahead=True")
        while len(self._buf) - self._pos < n:
            more = self._os_read(max(READ_CHUNK, n - self._buffered))
            if not more:
                break
            self._buf, self._pos = self._buf[self._pos:] + more, 0
        return self._buf[self._pos:self._pos + n]

    def read(self, n: int) -> bytes:
        """Reads up to ``n`` bytes; fewer only at end of stream."""
        if n <= 0:
            return b""
        data = self._take(n)
        if len(data) < n and data:
            parts: List[bytes] = [data]
            got = len(data)
            while got < n:
                chunk = self._take(n - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        self.offset += len(data)
        return data

    def read_exact(self, n: int, what: str) -> bytes:
        """Reads exactly ``n`` bytes or raises a truncation error."""
        data = self.read(n)
        if len(data) != n:
            raise self._truncated(what, len(data), n)
        return data

    def skip(self, n: int, what: str) -> None:
        """Consumes exactly ``n`` bytes without keeping them."""
        if n <= 0:
            return
        if self.seekable:
            self._seek_past(n, what)
            return
        done = 0
        while done < n:
            chunk = self.read(min(n - done, READ_CHUNK))
            if not chunk:
                raise self._truncated(what, done, n)
            done += len(chunk)

    def buffered(self, limit: int) -> bytes:
        """Up to ``limit`` bytes already in the read-ahead buffer, not
        consumed (b"" without read-ahead or when the buffer is empty)."""
        return self._buf[self._pos:self._pos + limit]

    def consume(self, n: int) -> None:
        """Consumes ``n`` bytes that :meth:`buffered` returned."""
        assert 0 <= n <= len(self._buf) - self._pos
        self._pos += n
        self.offset += n

    def repeats(self, unit: bytes) -> int:
        """Consumes the copies of ``unit`` that follow at once in the
        read-ahead buffer, and returns how many there were (0 without
        read-ahead).  A run of identical records costs a few comparisons
        of buffered bytes, not a parse each."""
        w = len(unit)
        buf, pos = self._buf, self._pos
        if not self.readahead or not w or buf[pos:pos + w] != unit:
            return 0
        most = (len(buf) - pos) // w

        def copies(have: int, want: int) -> bool:
            """Given ``have`` copies, are there ``want``?  (Compares only
            the bytes in between.)"""
            return buf[pos + have * w:pos + want * w] == unit * (want - have)

        # Doubling, then halving, each step comparing only bytes not yet
        # known to match: the work is proportional to the bytes consumed,
        # never to the buffer's size.
        lo, hi = 1, 2
        while hi <= most and copies(lo, hi):
            lo, hi = hi, hi * 2
        hi = min(hi - 1, most)
        while lo < hi:  # lo copies match, more than hi do not
            mid = (lo + hi + 1) // 2
            if copies(lo, mid):
                lo = mid
            else:
                hi = mid - 1
        self._pos += lo * w
        self.offset += lo * w
        return lo

    def _seek_past(self, n: int, what: str) -> None:
        remaining = self._remaining()
        if remaining < n:
            # Recheck: the file may have grown since we looked.
            self._size = os.fstat(self.fd).st_size
            remaining = self._remaining()
        take = min(n, remaining)
        in_buffer = min(take, self._buffered)
        self._pos += in_buffer
        if take > in_buffer:
            os.lseek(self.fd, take - in_buffer, os.SEEK_CUR)
        self.offset += take
        if take != n:
            raise self._truncated(what, take, n)

    def _remaining(self) -> int:
        assert self._size is not None
        return max(0, self._size - self.offset)

    def at_eof(self) -> bool:
        """True when no byte follows.  May read one byte ahead (kept)."""
        if self._buffered:
            return False
        if self.seekable:
            self._size = os.fstat(self.fd).st_size
            if self._remaining() and not self.readahead:
                return False
            if not self._remaining():
                return True
        data = self._os_read(READ_CHUNK if self.readahead else 1)
        self._buf, self._pos = data, 0
        return not data

    def _truncated(self, what: str, got: int, wanted: int) -> StreamFormatError:
        if got == 0:
            reason = f"truncated: end of file where {what} ({wanted} bytes) was expected"
        else:
            reason = f"truncated: end of file after {got} of {wanted} bytes of {what}"
        return StreamFormatError(reason, offset=self.offset, reason="truncated")
