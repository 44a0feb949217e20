"""The libxl migration stream v2: its header and its records, in the
phases around the libxc stream they carry.

Phases (``LibxlParser.phase``): None before LIBXC_CONTEXT, then "libxc"
(the libxc stream is next), "checkpoint" (between a libxc CHECKPOINT and
its CHECKPOINT_END), "trailer" (after the libxc END), "done" (after END).
"""

from __future__ import annotations

from typing import Any, List, Optional

from .base import Layer, fail
from .format import (
    EMULATOR_HEADER,
    EMULATOR_NAMES,
    LIBXL_EMPTY_RECORDS,
    LIBXL_EMULATOR_RECORDS,
    LIBXL_HEADER,
    LIBXL_IDENT,
    LIBXL_OFF_OPTIONS,
    LIBXL_OFF_VERSION,
    LIBXL_OPT_BIG_ENDIAN,
    LIBXL_OPTS_KNOWN,
    LIBXL_REFUSED_RECORDS,
    LIBXL_SECTION_ENDS,
    LIBXL_VERSION,
    RECORD_HEADER,
    RECORD_OFF_LENGTH,
    REC_TYPE_OPTIONAL,
    LibxlRecordType,
)
from .reader import READ_CHUNK
from .records import LibxlHeader, LibxlRecord

_T = LibxlRecordType
#: Phase -> how the header of the next record is described when it is missing.
_MISSING_HEADER = {
    "trailer": "a libxl record header (the stream has no END record)",
    "checkpoint": "a libxl record header (the checkpoint has no CHECKPOINT_END record)",
}
#: Record type -> the phase after it.
_NEXT_PHASE = {_T.LIBXC_CONTEXT: "libxc", _T.CHECKPOINT_END: "libxc", _T.END: "done"}


class LibxlParser(Layer):
    phase: Optional[str] = None

    def parse_header(self) -> LibxlHeader:
        start = self.r.offset
        raw = self.r.read_exact(LIBXL_HEADER.size, "the libxl stream header")
        ident, version, options = LIBXL_HEADER.unpack(raw)
        if ident != LIBXL_IDENT:
            want = LIBXL_HEADER.pack(LIBXL_IDENT, 0, 0)
            bad = next(i for i in range(LIBXL_OFF_VERSION) if raw[i] != want[i])
            raise fail(start + bad, f"bad libxl stream ident 0x{ident:016x}", "bad libxl ident")
        if version != LIBXL_VERSION:
            raise fail(
                start + LIBXL_OFF_VERSION,
                f"libxl stream version {version}, expected {LIBXL_VERSION}",
                "bad libxl version",
            )
        if options & LIBXL_OPT_BIG_ENDIAN:
            raise fail(start + LIBXL_OFF_OPTIONS, "big-endian libxl stream is not supported", "big-endian stream")
        reserved = options & ~LIBXL_OPTS_KNOWN
        if reserved:
            raise fail(
                start + LIBXL_OFF_OPTIONS,
                f"reserved bits 0x{reserved:x} set in the libxl stream options",
                "reserved options",
            )
        hdr = LibxlHeader(offset=start, version=version, options=options)
        self.s.libxl = hdr
        return hdr

    def read_record(self, *, keep_data: bool = False, max_data: int = 256 << 20) -> LibxlRecord:
        """Reads and checks one libxl record in the current phase.

        Bodies are streamed; ``keep_data`` keeps emulator record data (up
        to ``max_data`` bytes) in ``LibxlRecord.data``.
        """
        start = self.r.offset
        if self.phase == "done":
            raise fail(start, "data after the libxl END record", "data after END")
        if self.phase == "libxc":
            raise RuntimeError("the libxc stream has not been consumed yet (call libxc_returned())")
        what = _MISSING_HEADER.get(self.phase or "", "a libxl record header")
        rtype, length = RECORD_HEADER.unpack(self.r.read_exact(RECORD_HEADER.size, what))
        rec = LibxlRecord(offset=start, type=rtype, length=length)
        self._check_type(rec)
        self._check_order(rec)
        if rtype in LIBXL_EMPTY_RECORDS:
            if length != 0:
                raise fail(
                    start + RECORD_OFF_LENGTH, f"{rec.name} record has length {length}, must be 0", "bad record length"
                )
        else:
            self._emulator_record(rec, keep_data, max_data)
        self.check_padding(length, rec.name)
        self.s.count_libxl_record(rec)
        if rtype == _T.CHECKPOINT_END:
            self.s.checkpoint_ends += 1
        self.phase = _NEXT_PHASE.get(rtype, self.phase)
        return rec

    def _check_type(self, rec: LibxlRecord) -> None:
        rtype = rec.type
        if rtype in LIBXL_EMPTY_RECORDS or rtype in LIBXL_EMULATOR_RECORDS:
            return
        refused = LIBXL_REFUSED_RECORDS.get(rtype)
        if refused is not None:
            msg = refused
        elif rtype & REC_TYPE_OPTIONAL:
            msg = f"unknown optional libxl record type 0x{rtype:08x} (libxl rejects it, 4.17 to 4.21)"
        else:
            msg = f"unknown libxl record type 0x{rtype:08x}"
        raise fail(rec.offset, msg, "unknown record type")

    def _check_order(self, rec: LibxlRecord) -> None:
        phase, rtype, start = self.phase, rec.type, rec.offset
        if phase is None and rtype != _T.LIBXC_CONTEXT:
            raise fail(start, f"first libxl record is {rec.name}, expected LIBXC_CONTEXT", "record order")
        if rtype == _T.LIBXC_CONTEXT and phase is not None:
            raise fail(start, "second LIBXC_CONTEXT record", "record order")
        if rtype == _T.CHECKPOINT_END and phase != "checkpoint":
            raise fail(start, "CHECKPOINT_END record outside a checkpoint", "record order")
        if rtype == _T.END and phase == "checkpoint":
            raise fail(start, "END record inside a checkpoint (before CHECKPOINT_END)", "record order")

    def _emulator_record(self, rec: LibxlRecord, keep_data: bool, max_data: int) -> None:
        """An emulator record's sub-header, then its body (kept or streamed)."""
        name, start, length = rec.name, rec.offset, rec.length
        if length < EMULATOR_HEADER.size:
            raise fail(
                start + RECORD_OFF_LENGTH,
                f"{name} record length {length} cannot hold the {EMULATOR_HEADER.size}-byte emulator header",
                "bad record length",
            )
        head = self.r.read_exact(EMULATOR_HEADER.size, f"the {name} emulator header")
        emu_id, index = EMULATOR_HEADER.unpack(head)
        if emu_id not in EMULATOR_NAMES:
            msg = f"{name} record has unknown emulator id {emu_id}"
            raise fail(start + RECORD_HEADER.size, msg, "unknown emulator")
        rec.emulator_id = emu_id
        rec.emulator_index = index
        body = length - EMULATOR_HEADER.size
        data_offset = start + RECORD_HEADER.size + EMULATOR_HEADER.size
        xenstore = rec.type == _T.EMULATOR_XENSTORE_DATA
        if keep_data:
            if body > max_data:
                raise fail(
                    start + RECORD_OFF_LENGTH,
                    f"{name} record of {length} bytes exceeds the {max_data}-byte limit for records kept in memory",
                    "record too large",
                )
            rec.data = self.r.read_exact(body, f"the {name} record body")
            if xenstore:
                _check_xenstore(rec.data.count(b"\0"), rec.data[-1:], body, data_offset)
        elif xenstore:
            self._stream_xenstore(body, data_offset)
        else:
            self.r.skip(body, f"the {name} record body")

    def _stream_xenstore(self, length: int, offset: int) -> None:
        nuls = 0
        last = b""
        left = length
        while left:
            chunk = self.r.read_exact(min(left, READ_CHUNK), "the EMULATOR_XENSTORE_DATA record body")
            nuls += chunk.count(b"\0")
            last = chunk[-1:]
            left -= len(chunk)
        _check_xenstore(nuls, last, length, offset)

    def read_section(self, **kw: Any) -> List[LibxlRecord]:
        """After the libxc stream handed back (END or CHECKPOINT): reads libxl
        records up to and including END (or CHECKPOINT_END)."""
        out = []
        while True:
            rec = self.read_record(**kw)
            out.append(rec)
            if rec.type in LIBXL_SECTION_ENDS:
                return out

    def libxc_returned(self, how: str) -> None:
        """How the libxc stream handed back: "end" or "checkpoint"."""
        if how == "end":
            self.phase = "trailer"
        elif how == "checkpoint":
            self.phase = "checkpoint"
        else:
            raise ValueError(how)


def _check_xenstore(nuls: int, last: bytes, length: int, offset: int) -> None:
    """Key/value data: NUL-terminated strings, an even number of them."""
    if length and last != b"\0":
        raise fail(offset + length - 1, "emulator xenstore data is not NUL-terminated", "xenstore data")
    if nuls % 2:
        raise fail(offset, f"emulator xenstore data holds {nuls} strings, not key/value pairs", "xenstore data")
