"""What the parsers of every layer share: the reader, the summary, errors
at absolute offsets, and the zero padding after a record."""

from __future__ import annotations

from ..errors import StreamFormatError
from .format import pad_length
from .reader import StreamReader
from .summary import Summary


def fail(offset: int, message: str, reason: str = "") -> StreamFormatError:
    """The error for a problem at absolute ``offset`` (``reason``: a short
    machine-friendly category, the message when empty)."""
    return StreamFormatError(message, offset=offset, reason=reason or message)


class Layer:
    """A parser for one layer of a stream, reading from ``r`` and
    reporting into ``s`` (both shared with the other layers)."""

    def __init__(self, reader: StreamReader, summary: Summary):
        self.r = reader
        self.s = summary

    def check_padding(self, length: int, name: str) -> None:
        """Reads the padding after a record body of ``length`` bytes."""
        n = pad_length(length)
        if n:
            start = self.r.offset
            pad = self.r.read_exact(n, f"the padding of the {name} record")
            if pad.strip(b"\0"):
                bad = next(i for i, b in enumerate(pad) if b)
                raise fail(start + bad, f"non-zero padding after the {name} record", "non-zero padding")
