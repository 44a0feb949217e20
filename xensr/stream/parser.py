"""StreamParser: the layers of a stream in their order.

Each layer has its own parser (``xl``, ``libxl``, ``libxc``) sharing one
reader and one summary; this class puts them in sequence for a whole
stream, and offers each step on its own for the xl file reader, which lets
a helper process consume the libxc part in between.
"""

from __future__ import annotations

from typing import Any, List, Optional

from .base import fail
from .libxc import LibxcParser
from .libxl import LibxlParser
from .reader import StreamReader
from .records import LibxcHeaders, LibxlHeader, LibxlRecord, XlHeader
from .summary import Summary
from .xl import XlParser


class StreamParser:
    """Parses the layers of a stream from a :class:`StreamReader`.

    The pieces can be used one by one (the xl file reader reads the
    preamble, lets a helper consume the libxc stream, then reads the rest)
    or all at once with :meth:`scan`.  Statistics go into ``summary``.
    """

    def __init__(self, reader: StreamReader, summary: Optional[Summary] = None):
        self.r = reader
        self.s = summary if summary is not None else Summary()
        self._xl = XlParser(reader, self.s)
        self._libxl = LibxlParser(reader, self.s)
        self._libxc = LibxcParser(reader, self.s)

    @property
    def libxl_phase(self) -> Optional[str]:
        """None before LIBXC_CONTEXT, then "libxc", "checkpoint" (between
        libxc CHECKPOINT and CHECKPOINT_END), "trailer" (after libxc END),
        "done" (after END)."""
        return self._libxl.phase

    @libxl_phase.setter
    def libxl_phase(self, phase: Optional[str]) -> None:
        self._libxl.phase = phase

    # -- one step at a time

    def parse_xl_header(self, *, max_config: Optional[int] = None, skip_large_config: bool = True) -> XlHeader:
        """Reads the xl header and its optional data.

        A configuration larger than ``max_config`` (default 16 MiB) is
        streamed past (not kept: ``config`` stays None) when
        ``skip_large_config``, else it is an error."""
        return self._xl.parse_header(max_config=max_config, skip_large_config=skip_large_config)

    def parse_libxl_header(self) -> LibxlHeader:
        return self._libxl.parse_header()

    def read_libxl_record(self, *, keep_data: bool = False, max_data: int = 256 << 20) -> LibxlRecord:
        """Reads and checks one libxl record in the current phase.

        Bodies are streamed; ``keep_data`` keeps emulator record data (up
        to ``max_data`` bytes) in ``LibxlRecord.data``.
        """
        return self._libxl.read_record(keep_data=keep_data, max_data=max_data)

    def read_libxl_section(self, **kw: Any) -> List[LibxlRecord]:
        """After the libxc stream handed back (END or CHECKPOINT): reads libxl
        records up to and including END (or CHECKPOINT_END)."""
        return self._libxl.read_section(**kw)

    def libxc_returned(self, how: str) -> None:
        """Tells the parser how the libxc stream handed back: "end" or
        "checkpoint".  (Used when something else consumed the libxc part.)"""
        self._libxl.libxc_returned(how)

    def check_eof(self) -> None:
        if not self.r.at_eof():
            raise fail(self.r.offset, "trailing data after the final END record", "trailing data")

    def parse_libxc_headers(self) -> LibxcHeaders:
        return self._libxc.parse_headers()

    def scan_libxc_records(self, *, eof_ok: bool = False) -> str:
        """Reads libxc records up to END or CHECKPOINT.

        Returns "end", "checkpoint", or "eof" when ``eof_ok`` and the stream
        ends cleanly before the first record header (the end of a
        checkpointed stream whose sender stopped after a checkpoint).
        """
        return self._libxc.scan_records(eof_ok=eof_ok)

    # -- all at once

    def scan(self, fmt: str) -> Summary:
        """Walks a whole stream of the given format ("xl", "libxl", "libxc")."""
        s = self.s
        s.format = fmt
        if fmt not in ("xl", "libxl", "libxc"):
            raise ValueError(f"unknown stream format {fmt!r}")
        if fmt == "xl":
            self.parse_xl_header()
        if fmt in ("xl", "libxl"):
            self.parse_libxl_header()
            self.read_libxl_record()  # LIBXC_CONTEXT, enforced
        self.parse_libxc_headers()
        s.ended = self._scan_sections(wrapped=fmt != "libxc")
        s.end_offset = self.r.offset
        return s

    def _scan_sections(self, *, wrapped: bool) -> str:
        """The libxc stream, and (``wrapped`` in libxl) the libxl records
        after each of its checkpoints and its END; returns how it ended."""
        s = self.s
        while True:
            if wrapped:
                eof_ok = self.libxl_phase == "libxc" and s.checkpoint_ends > 0
            else:
                eof_ok = s.checkpoints > 0
            how = self.scan_libxc_records(eof_ok=eof_ok)
            if how == "eof":
                return "checkpoint"
            if wrapped:
                self.libxc_returned(how)
                self.read_libxl_section()
            if how == "end":
                self.check_eof()
                return "END"
