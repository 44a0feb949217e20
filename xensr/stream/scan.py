"""Entry points: tell the format from the first bytes, and check and
summarise a whole file or fd."""

from __future__ import annotations

import os
import struct
import sys
from typing import Optional

from ..errors import StreamFormatError
from .format import LIBXC_ID, LIBXC_MARKER, LIBXL_IDENT, XL_MAGIC
from .parser import StreamParser
from .reader import StreamReader
from .summary import Summary

_MAGICS = (
    ("xl", XL_MAGIC),
    ("libxl", struct.pack(">Q", LIBXL_IDENT)),
    ("libxc", struct.pack(">QI", LIBXC_MARKER, LIBXC_ID)),
)
#: Bytes enough to tell the formats apart.
_HEAD = max(len(magic) for _, magic in _MAGICS)


def _common_prefix(a: bytes, b: bytes) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def detect_format(head: bytes) -> Optional[str]:
    """"xl", "libxl" or "libxc" from the first bytes of a stream, or None.

    The format whose magic shares the longest prefix with ``head`` wins, so
    that a damaged magic is reported by that format's parser at the first
    wrong byte rather than as an unknown format.
    """
    best, best_len = None, 0
    for fmt, magic in _MAGICS:
        n = _common_prefix(head, magic)
        if n > best_len:
            best, best_len = fmt, n
    return best


def scan_fd(fd: int, *, fmt: Optional[str] = None, path: Optional[str] = None) -> Summary:
    """Validates and summarises the stream readable from ``fd``.

    The format is detected from the first bytes unless given.  Raises
    :class:`StreamFormatError` on the first problem.
    """
    reader = StreamReader(fd, readahead=True)
    try:
        summary = Summary(path=path)
        if reader.seekable:
            summary.size = os.fstat(fd).st_size
        if fmt is None:
            fmt = _detect(reader)
        return StreamParser(reader, summary).scan(fmt)
    finally:
        reader.close()


def _detect(reader: StreamReader) -> str:
    head = reader.peek(_HEAD)
    fmt = detect_format(head)
    if fmt is None:
        if not head:
            raise StreamFormatError("empty file", offset=reader.offset, reason="empty")
        raise StreamFormatError(
            "not an xl save file, libxl or libxc migration stream (unknown magic)",
            offset=reader.offset,
            reason="unknown format",
        )
    return fmt


def scan_file(path: str, *, fmt: Optional[str] = None) -> Summary:
    """Opens ``path`` (``-`` for standard input) and runs :func:`scan_fd`."""
    if path == "-":
        return scan_fd(sys.stdin.fileno(), fmt=fmt, path=path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return scan_fd(fd, fmt=fmt, path=path)
    finally:
        os.close(fd)
