"""Exact, bounded reading of a stream from a file descriptor.

Files, pipes and non-blocking fds alike: the reader knows the absolute
offset of the next byte (for error messages), reads only what the parser
asks for, and skips bodies without holding them.
"""

from __future__ import annotations

import io
import os
import select as _select
import stat
from typing import List, Optional, cast

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
    With ``readahead=True`` it reads through a 1 MiB buffer, which is what
    ``inspect`` wants; the fd position is then unspecified.

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
        self._file: Optional[io.BufferedReader] = None
        if readahead:
            self._file = cast(io.BufferedReader, open(fd, "rb", buffering=READ_CHUNK, closefd=False))
        self._pushback = b""

    def close(self) -> None:
        """Drops the read-ahead buffer (the fd itself stays open)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- raw reading

    def _raw_read(self, n: int) -> bytes:
        while True:
            try:
                data = self._file.read(n) if self._file is not None else os.read(self.fd, n)
            except BlockingIOError:
                data = None
            if data is not None:
                return data
            # A non-blocking fd with nothing to read yet: wait for it.
            poller = _select.poll()
            poller.register(self.fd, _select.POLLIN)
            poller.poll()

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes, not consumed (read-ahead readers only)."""
        if self._file is None:
            raise RuntimeError("peek() needs a reader made with readahead=True")
        return self._file.peek(n)[:n]

    def read(self, n: int) -> bytes:
        """Reads up to ``n`` bytes; fewer only at end of stream."""
        if n <= 0:
            return b""
        parts: List[bytes] = []
        got = 0
        if self._pushback:
            take = self._pushback[:n]
            self._pushback = self._pushback[n:]
            parts.append(take)
            got = len(take)
        while got < n:
            chunk = self._raw_read(n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
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
        if self.seekable and not self._pushback:
            self._seek_past(n, what)
            return
        done = 0
        while done < n:
            chunk = self.read(min(n - done, READ_CHUNK))
            if not chunk:
                raise self._truncated(what, done, n)
            done += len(chunk)

    def _seek_past(self, n: int, what: str) -> None:
        remaining = self._remaining()
        if remaining < n:
            # Recheck: the file may have grown since we looked.
            self._size = os.fstat(self.fd).st_size
            remaining = self._remaining()
        take = min(n, remaining)
        if self._file is not None:
            self._file.seek(take, os.SEEK_CUR)
        else:
            os.lseek(self.fd, take, os.SEEK_CUR)
        self.offset += take
        if take != n:
            raise self._truncated(what, take, n)

    def _remaining(self) -> int:
        assert self._size is not None
        return max(0, self._size - self.offset)

    def at_eof(self) -> bool:
        """True when no byte follows.  May read one byte ahead (kept)."""
        if self._pushback:
            return False
        if self.seekable:
            self._size = os.fstat(self.fd).st_size
            if self._file is None:
                return self._remaining() == 0
        if self._file is not None:
            return not self._file.peek(1)
        byte = self._raw_read(1)
        if not byte:
            return True
        self._pushback = byte
        return False

    def _truncated(self, what: str, got: int, wanted: int) -> StreamFormatError:
        if got == 0:
            reason = f"truncated: end of file where {what} ({wanted} bytes) was expected"
        else:
            reason = f"truncated: end of file after {got} of {wanted} bytes of {what}"
        return StreamFormatError(reason, offset=self.offset, reason="truncated")
