"""The libxc migration stream v2/v3: image and domain headers, then records
dispatched by type through a table.

Each record goes through the same steps: its header, the rule for its type
from ``format.LIBXC_RECORDS`` (where it may appear, how long it may be),
then the handler for its type from ``_HANDLERS`` (what its contents must
be, and what the summary learns from them), then its padding.
"""

from __future__ import annotations

import collections
import sys
from array import array
from dataclasses import dataclass
from typing import Callable, Dict, Set, Tuple

from ..errors import StreamFormatError
from .base import Layer, fail
from .format import (
    DOMAIN_NAMES,
    HVM_PARAMS_ENTRY,
    HVM_PARAMS_HEADER,
    HVM_PARAMS_OFF_RESERVED,
    HVM_SAVE_CPU,
    HVM_SAVE_DESCRIPTOR,
    HVM_SAVE_END,
    LIBXC_DHDR,
    LIBXC_DHDR_OFF_PAGE_SHIFT,
    LIBXC_DHDR_OFF_RESERVED,
    LIBXC_ID,
    LIBXC_IHDR,
    LIBXC_IHDR_OFF_ID,
    LIBXC_IHDR_OFF_OPTIONS,
    LIBXC_IHDR_OFF_RESERVED,
    LIBXC_IHDR_OFF_VERSION,
    LIBXC_MARKER,
    LIBXC_OPT_BIG_ENDIAN,
    LIBXC_RECORDS,
    LIBXC_V3,
    LIBXC_VERSIONS,
    P2M_FRAME_SIZE,
    PAGE_DATA_HEADER,
    PAGE_DATA_OFF_RESERVED,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGE_TYPE_NAMES,
    PAGE_TYPES_WITH_DATA,
    PFN_MASK,
    PFN_RESERVED_MASK,
    PFN_TYPE_SHIFT,
    PFN_WORD_SIZE,
    RECORD_HEADER,
    RECORD_OFF_LENGTH,
    REC_LENGTH_MAX,
    REC_TYPE_OPTIONAL,
    VALID_PAGE_TYPES,
    X86_PV_INFO,
    X86_PV_INFO_OFF_LEVELS,
    X86_PV_INFO_OFF_RESERVED,
    X86_PV_GUEST_WIDTHS,
    X86_PV_PT_LEVELS,
    X86_PV_P2M_FRAMES_HEADER,
    X86_PV_VCPU_HEADER,
    X86_PV_VCPU_OFF_RESERVED,
    X86_TSC_INFO,
    X86_TSC_INFO_OFF_RESERVED,
    DomainType,
    LibxcRecordRule,
    LibxcRecordType,
    libxc_record_name,
    record_wire_size,
)
from .reader import StreamReader
from .records import LibxcHeaders
from .summary import Summary

# Bounds on what one record makes the parser hold or walk.
_PFN_CHUNK = 64 * 1024  # bytes of pfn array read at a time
_MAX_HVM_DESCRIPTORS = 1 << 16
#: Records up to this size (header and padding included) that repeat are
#: consumed as a run (see LibxcParser._repeated).
_MAX_REPEATED_WIRE = 4096 + 64
#: Records whose copy is not what the original was: a second one is an
#: error (X86_PV_INFO, STATIC_DATA_END), or the section ends (END,
#: CHECKPOINT: never reached here).
_ONCE = frozenset({LibxcRecordType.X86_PV_INFO, LibxcRecordType.STATIC_DATA_END})


@dataclass
class _Record:
    """The record being parsed: where it starts, its type and body length."""

    start: int
    type: int
    length: int
    name: str

    @property
    def body(self) -> int:
        """Offset of the first body byte."""
        return self.start + RECORD_HEADER.size

    def bad_length(self, expect: str) -> StreamFormatError:
        return fail(
            self.start + RECORD_OFF_LENGTH,
            f"libxc {self.name} record length {self.length}, expected {expect}",
            "bad record length",
        )

    def reserved(self, offset: int) -> StreamFormatError:
        """A non-zero reserved field at ``offset`` bytes into the body."""
        return fail(self.body + offset, f"reserved field of {self.name} is not zero", "reserved field")


class LibxcParser(Layer):
    def __init__(self, reader: StreamReader, summary: Summary):
        super().__init__(reader, summary)
        # Order state the rules and handlers check.
        self._seen_static_data_end = False
        self._seen_pv_info = False
        self._pages_since_checkpoint = 0
        # The last PAGE_DATA record: pfns, pages with data, pages by type
        # (what a copy of it adds; see _repeated).
        self._last_page_data: Tuple[int, int, Dict[str, int]] = (0, 0, {})
        self._record_types: Dict[str, int] = {}
        self._last_types: Dict[str, int] = {}

    # ------------------------------------------------------------ headers

    def parse_headers(self) -> LibxcHeaders:
        start = self.r.offset
        version, options = self._image_header(start)
        dstart = self.r.offset
        dtype, page_shift, dres, major, minor = LIBXC_DHDR.unpack(
            self.r.read_exact(LIBXC_DHDR.size, "the libxc domain header")
        )
        if dtype not in DOMAIN_NAMES:
            raise fail(dstart, f"unknown libxc domain type {dtype}", "unknown domain type")
        if page_shift != PAGE_SHIFT:
            raise fail(
                dstart + LIBXC_DHDR_OFF_PAGE_SHIFT,
                f"libxc page shift {page_shift}, expected {PAGE_SHIFT}",
                "bad page shift",
            )
        if dres:
            raise fail(
                dstart + LIBXC_DHDR_OFF_RESERVED,
                "reserved field of the libxc domain header is not zero",
                "reserved field",
            )
        hdr = LibxcHeaders(
            offset=start,
            version=version,
            options=options,
            domain_type=dtype,
            page_shift=page_shift,
            xen_major=major,
            xen_minor=minor,
        )
        self.s.libxc = hdr
        self.s.libxc_offset = start
        self.s.libxc_bytes += LIBXC_IHDR.size + LIBXC_DHDR.size
        self.s.vcpu_source = "X86_PV_VCPU_BASIC" if dtype == DomainType.X86_PV else "HVM_CONTEXT"
        return hdr

    def _image_header(self, start: int) -> Tuple[int, int]:
        raw = self.r.read_exact(LIBXC_IHDR.size, "the libxc image header")
        marker, ident, version, options, res1, res2 = LIBXC_IHDR.unpack(raw)
        want = LIBXC_IHDR.pack(LIBXC_MARKER, LIBXC_ID, 0, 0, 0, 0)
        if marker != LIBXC_MARKER:
            bad = next(i for i in range(LIBXC_IHDR_OFF_ID) if raw[i] != want[i])
            raise fail(start + bad, f"bad libxc image marker 0x{marker:016x}", "bad libxc marker")
        if ident != LIBXC_ID:
            bad = next(i for i in range(LIBXC_IHDR_OFF_ID, LIBXC_IHDR_OFF_VERSION) if raw[i] != want[i])
            raise fail(start + bad, f"bad libxc image id 0x{ident:08x}", "bad libxc id")
        if version not in LIBXC_VERSIONS:
            raise fail(
                start + LIBXC_IHDR_OFF_VERSION,
                f"libxc stream version {version}, expected {_either(LIBXC_VERSIONS)}",
                "bad libxc version",
            )
        if options & LIBXC_OPT_BIG_ENDIAN:
            raise fail(start + LIBXC_IHDR_OFF_OPTIONS, "big-endian libxc stream is not supported", "big-endian stream")
        if options & ~LIBXC_OPT_BIG_ENDIAN:
            raise fail(
                start + LIBXC_IHDR_OFF_OPTIONS,
                f"reserved bits 0x{options & ~LIBXC_OPT_BIG_ENDIAN:x} set in the libxc image options",
                "reserved options",
            )
        for off, value in zip(LIBXC_IHDR_OFF_RESERVED, (res1, res2)):
            if value:
                raise fail(start + off, "reserved field of the libxc image header is not zero", "reserved field")
        return version, options

    # ------------------------------------------------------------ records

    def scan_records(self, *, eof_ok: bool = False) -> str:
        """Reads libxc records up to END or CHECKPOINT.

        Returns "end", "checkpoint", or "eof" when ``eof_ok`` and the stream
        ends cleanly before the first record header (the end of a
        checkpointed stream whose sender stopped after a checkpoint).
        """
        hdr = self.s.libxc
        assert hdr is not None, "parse_libxc_headers() first"
        if eof_ok and self.r.at_eof():
            return "eof"
        while True:
            if self._empty_records():
                continue
            unit = self._peek_small_record()
            rec = self._record_header()
            self._dispatch(rec, hdr)
            self.check_padding(rec.length, rec.name)
            self.s.count_libxc_record(rec.name, record_wire_size(rec.length))
            if rec.type == LibxcRecordType.END:
                return "end"
            if rec.type == LibxcRecordType.CHECKPOINT:
                self.s.add_checkpoint(self._pages_since_checkpoint)
                self._pages_since_checkpoint = 0
                return "checkpoint"
            if unit and rec.type not in _ONCE:
                times = self.r.repeats(unit)
                if times:
                    self._repeated(rec, times)

    def _empty_records(self) -> int:
        """Consumes the empty VERIFY and optional records that come next in
        the read-ahead buffer (up to ``_EMPTY_BLOCK`` bytes) at once, with
        whole-block byte operations, and counts them; returns how many.
        Any other record stops the block and is parsed as usual."""
        r = self.r
        if not r.readahead or r.peek(RECORD_HEADER.size)[RECORD_OFF_LENGTH:] != _ZERO_LENGTH:
            return 0
        block = r.buffered(_EMPTY_BLOCK)
        n = len(block) // RECORD_HEADER.size
        if not n:
            return 0
        # Per record a flag byte, 0 when it may go: an empty body, and
        # VERIFY or an optional type (high bit of its type's last byte).
        lengths = _flags(block[4::8][:n], block[5::8][:n], block[6::8][:n], block[7::8][:n])
        not_verify = (int.from_bytes(block[0::8][:n].translate(_NOT_VERIFY), "little")
                      | _flags(block[1::8][:n], block[2::8][:n], block[3::8][:n]))
        mandatory = int.from_bytes(block[3::8][:n].translate(_MANDATORY), "little")
        stop = (lengths | (not_verify & mandatory)).to_bytes(n, "little")
        k = n - len(stop.lstrip(b"\0"))
        if not k:
            return 0
        verify = k - _count_set(not_verify, k)
        if verify:
            self.s.count_libxc_record("VERIFY", RECORD_HEADER.size, verify)
        if verify < k:
            types = array("I")
            types.frombytes(block[:RECORD_HEADER.size * k])
            if sys.byteorder != "little":  # pragma: no cover
                types.byteswap()
            for rtype, times in collections.Counter(types[0::2]).items():
                if rtype != LibxcRecordType.VERIFY:
                    self.s.count_libxc_record(libxc_record_name(rtype), RECORD_HEADER.size, times)
            self.s.optional_records_skipped += k - verify
        r.consume(RECORD_HEADER.size * k)
        return k

    def _peek_small_record(self) -> bytes:
        """The bytes of the next record when it is small and a read-ahead
        reader holds it, else b"" (see :meth:`_repeated`)."""
        r = self.r
        if not r.readahead:
            return b""
        head = r.peek(RECORD_HEADER.size)
        if len(head) < RECORD_HEADER.size:
            return b""
        length = RECORD_HEADER.unpack(head)[1]
        if not length:
            return head
        wire = record_wire_size(length)
        if wire > _MAX_REPEATED_WIRE:
            return b""
        unit = r.peek(wire)
        return unit if len(unit) == wire else b""

    def _repeated(self, rec: _Record, times: int) -> None:
        """``times`` more copies of the record just parsed followed it, and
        were consumed at once: the summary learns what parsing each would
        have taught it.  A copy passes every check its original passed
        (the checks depend on the record and on order state that only
        _ONCE records change), so a stream of tiny identical records costs
        what reading it does."""
        if not times:
            return
        s = self.s
        s.count_libxc_record(rec.name, record_wire_size(rec.length), times)
        if rec.type == LibxcRecordType.PAGE_DATA:
            count, with_data, types = self._last_page_data
            s.page_records += times
            s.pages += count * times
            s.pages_with_data += with_data * times
            for name, c in types.items():
                s.page_types[name] += c * times
            s.pfns.allowance += with_data * times
            self._pages_since_checkpoint += count * times
        elif rec.type not in LIBXC_RECORDS:
            s.optional_records_skipped += times

    def _record_header(self) -> _Record:
        start = self.r.offset
        rtype, length = RECORD_HEADER.unpack(
            self.r.read_exact(RECORD_HEADER.size, "a libxc record header (the libxc stream has no END record)")
        )
        rec = _Record(start, rtype, length, libxc_record_name(rtype))
        if length > REC_LENGTH_MAX:
            raise fail(
                start + RECORD_OFF_LENGTH,
                f"libxc {rec.name} record length {length} exceeds the maximum {REC_LENGTH_MAX}",
                "record too long",
            )
        return rec

    def _dispatch(self, rec: _Record, hdr: LibxcHeaders) -> None:
        rule = LIBXC_RECORDS.get(rec.type)
        if rule is None:
            if rec.type & REC_TYPE_OPTIONAL:
                self.s.optional_records_skipped += 1
                self.r.skip(rec.length, f"the optional libxc record 0x{rec.type:08x}")
                return
            raise fail(rec.start, f"unknown mandatory libxc record type 0x{rec.type:08x}", "unknown record type")
        self._check_rule(rec, rule, hdr)
        _HANDLERS[rec.type](self, rec, hdr)

    def _check_rule(self, rec: _Record, rule: LibxcRecordRule, hdr: LibxcHeaders) -> None:
        """Where the record stands and how long it is, per its type's rule."""
        start, name = rec.start, rec.name
        if rule.refused:
            raise fail(start, rule.refused, "bad record type")
        if rule.domain is not None and rule.domain != hdr.domain_type:
            msg = f"{name} record in an {DOMAIN_NAMES[hdr.domain_type]} stream"
            raise fail(start, msg, "record not valid for domain type")
        if hdr.version < rule.since:
            raise fail(start, f"{name} record in a version {hdr.version} libxc stream", "record order")
        if rule.after_pv_info and not self._seen_pv_info:
            raise fail(start, f"{name} record before X86_PV_INFO", "record order")
        if rule.after_static_data_end and hdr.version >= LIBXC_V3 and not self._seen_static_data_end:
            raise fail(start, f"{name} record before STATIC_DATA_END", "record order")
        if rule.length is not None and not rule.length.ok(rec.length):
            raise rec.bad_length(rule.length.expect)

    # ------------------------------------------------ one handler per type

    def _skip_body(self, rec: _Record, hdr: LibxcHeaders) -> None:
        self.r.skip(rec.length, f"the {rec.name} record body")

    def _nothing(self, rec: _Record, hdr: LibxcHeaders) -> None:
        """Empty records: the rule checked the length."""

    def _static_data_end(self, rec: _Record, hdr: LibxcHeaders) -> None:
        if self._seen_static_data_end:
            raise fail(rec.start, "second STATIC_DATA_END record", "record order")
        self._seen_static_data_end = True

    def _x86_pv_info(self, rec: _Record, hdr: LibxcHeaders) -> None:
        if self._seen_pv_info:
            raise fail(rec.start, "second X86_PV_INFO record", "record order")
        body = self.r.read_exact(X86_PV_INFO.size, "the X86_PV_INFO record body")
        width, levels, res1, res2 = X86_PV_INFO.unpack(body)
        if width not in X86_PV_GUEST_WIDTHS:
            raise fail(
                rec.body, f"X86_PV_INFO guest width {width}, expected {_either(X86_PV_GUEST_WIDTHS)}", "bad record"
            )
        if levels not in X86_PV_PT_LEVELS:
            raise fail(
                rec.body + X86_PV_INFO_OFF_LEVELS,
                f"X86_PV_INFO page-table levels {levels}, expected {_either(X86_PV_PT_LEVELS)}",
                "bad record",
            )
        if res1 or res2:
            raise rec.reserved(X86_PV_INFO_OFF_RESERVED)
        self._seen_pv_info = True
        self.s.pv_guest_width = width
        self.s.pv_pt_levels = levels

    def _x86_pv_p2m_frames(self, rec: _Record, hdr: LibxcHeaders) -> None:
        head = X86_PV_P2M_FRAMES_HEADER
        first, last = head.unpack(self.r.read_exact(head.size, "the X86_PV_P2M_FRAMES header"))
        if first > last:
            raise fail(rec.body, f"X86_PV_P2M_FRAMES start pfn {first} > end pfn {last}", "bad record")
        # One frame per p2m page covering first..last; a p2m page holds
        # PAGE_SIZE / guest width entries.
        per_frame = PAGE_SIZE // (self.s.pv_guest_width or max(X86_PV_GUEST_WIDTHS))
        frames = last // per_frame + 1 - first // per_frame
        want = head.size + P2M_FRAME_SIZE * frames
        if rec.length != want:
            raise rec.bad_length(f"{want} for pfns {first}-{last}")
        self.r.skip(rec.length - head.size, "the X86_PV_P2M_FRAMES record body")

    def _x86_pv_vcpu(self, rec: _Record, hdr: LibxcHeaders) -> None:
        head = X86_PV_VCPU_HEADER
        vcpu_id, res = head.unpack(self.r.read_exact(head.size, f"the {rec.name} header"))
        if res:
            raise rec.reserved(X86_PV_VCPU_OFF_RESERVED)
        # A BASIC record with a context says the vCPU is up.
        if rec.type == LibxcRecordType.X86_PV_VCPU_BASIC and rec.length > head.size:
            self.s.add_vcpu_id(vcpu_id)
        self.r.skip(rec.length - head.size, f"the {rec.name} record body")

    def _x86_tsc_info(self, rec: _Record, hdr: LibxcHeaders) -> None:
        mode, khz, nsec, incarnation, res = X86_TSC_INFO.unpack(
            self.r.read_exact(X86_TSC_INFO.size, "the X86_TSC_INFO record body")
        )
        if res:
            raise rec.reserved(X86_TSC_INFO_OFF_RESERVED)
        self.s.tsc = {"mode": mode, "khz": khz, "nsec": nsec, "incarnation": incarnation}

    def _hvm_params(self, rec: _Record, hdr: LibxcHeaders) -> None:
        head = HVM_PARAMS_HEADER
        count, res = head.unpack(self.r.read_exact(head.size, "the HVM_PARAMS header"))
        if res:
            raise rec.reserved(HVM_PARAMS_OFF_RESERVED)
        want = head.size + HVM_PARAMS_ENTRY.size * count
        if rec.length != want:
            raise rec.bad_length(f"{want} for {count} parameters")
        self.r.skip(rec.length - head.size, "the HVM_PARAMS entries")
        self.s.hvm_params = count

    def _hvm_context(self, rec: _Record, hdr: LibxcHeaders) -> None:
        """Counts the CPU save records in an HVM context blob.  A blob that
        does not parse leaves the vCPU count unknown (Xen checks it)."""
        r = self.r
        left = rec.length
        cpus: Set[int] = set()
        ok = True
        for _ in range(_MAX_HVM_DESCRIPTORS):
            if left < HVM_SAVE_DESCRIPTOR.size:
                ok = left == 0
                break
            typecode, instance, dlen = HVM_SAVE_DESCRIPTOR.unpack(
                r.read_exact(HVM_SAVE_DESCRIPTOR.size, "an HVM context descriptor")
            )
            left -= HVM_SAVE_DESCRIPTOR.size
            if typecode == HVM_SAVE_END:
                break
            if dlen > left:
                ok = False
                break
            if typecode == HVM_SAVE_CPU:
                cpus.add(instance)
            r.skip(dlen, "HVM context data")
            left -= dlen
        else:
            ok = False
        r.skip(left, "the HVM_CONTEXT record body")
        self.s.hvm_vcpus = len(cpus) if ok else None

    def _page_data(self, rec: _Record, hdr: LibxcHeaders) -> None:
        head = PAGE_DATA_HEADER
        if rec.length < head.size:
            raise fail(
                rec.start + RECORD_OFF_LENGTH,
                f"PAGE_DATA record length {rec.length} is shorter than its header",
                "bad length",
            )
        count, res = head.unpack(self.r.read_exact(head.size, "the PAGE_DATA header"))
        if res:
            raise rec.reserved(PAGE_DATA_OFF_RESERVED)
        if count < 1:
            raise fail(rec.body, "PAGE_DATA record with no pfns", "bad page count")
        if rec.length < head.size + PFN_WORD_SIZE * count:
            raise fail(
                rec.body,
                f"PAGE_DATA count {count} does not fit in the record length {rec.length}",
                "bad page count",
            )
        with_data = self._pfn_words(count)
        expect = head.size + PFN_WORD_SIZE * count + PAGE_SIZE * with_data
        if rec.length != expect:
            raise fail(
                rec.start + RECORD_OFF_LENGTH,
                f"PAGE_DATA record length {rec.length}, expected {expect} "
                f"({head.size} + {PFN_WORD_SIZE} x {count} pfns + {PAGE_SIZE} x {with_data} pages with data)",
                "bad page data length",
            )
        self.r.skip(PAGE_SIZE * with_data, "the PAGE_DATA page contents")
        s = self.s
        s.page_records += 1
        s.pages += count
        s.pages_with_data += with_data
        self._pages_since_checkpoint += count
        self._last_page_data = (count, with_data, self._last_types)

    def _pfn_words(self, count: int) -> int:
        """Reads and checks ``count`` pfn words, a chunk at a time, into the
        summary; returns how many of them carry a page of data.

        The words of a chunk are checked and counted with whole-chunk byte
        operations (a few per chunk, whatever its length), never a Python
        step per word: a record of 16M pfns costs what reading it does."""
        r = self.r
        with_data = 0
        idx = 0
        while idx < count:
            n = min(count - idx, _PFN_CHUNK // PFN_WORD_SIZE)
            chunk_off = r.offset
            raw = r.read_exact(PFN_WORD_SIZE * n, "the PAGE_DATA pfn array")
            with_data += self._pfn_chunk(raw, n, chunk_off, idx)
            idx += n
        self._last_types = self._record_types
        self._record_types = {}
        return with_data

    def _pfn_chunk(self, raw: bytes, n: int, offset: int, index: int) -> int:
        """One chunk of ``n`` little-endian pfn words (the first at stream
        ``offset``, word ``index`` of its record); returns the pages with data."""
        # Byte 7 of a word holds the type (high nibble) and reserved bits
        # 56-59; byte 6's high nibble holds reserved bits 52-55.
        top, sixth = raw[7::8], raw[6::8]
        if (top.translate(_BAD_TOP).count(0) != n
                or sixth.translate(_HIGH_NIBBLE).count(0) != n):
            _raise_first_bad_word(raw, offset, index)
        with_data = self._count_types(top.translate(_TYPE_OF), n)
        # The pfns: the words with their top 12 bits cleared.
        masked = bytearray(raw)
        masked[7::8] = bytes(n)
        masked[6::8] = sixth.translate(_LOW_NIBBLE)
        pfns = array("Q")
        pfns.frombytes(masked)
        if sys.byteorder != "little":  # pragma: no cover
            pfns.byteswap()
        # One run of consecutive pfns?  As integers of 64n bits, the chunk
        # is then first * (1 + 2^64 + 2^128 ...) + (0 + 1 * 2^64 + 2 * 2^128 ...).
        repunit, iota = _run_terms(PFN_WORD_SIZE * n)
        run = int.from_bytes(masked, "little") == pfns[0] * repunit + iota
        self.s.pfns.add_chunk(pfns, with_data, run=run)
        return with_data

    def _count_types(self, types: bytes, n: int) -> int:
        """Counts the page types of a chunk (one byte each) into the
        summary; returns how many carry data.  The usual types first: a
        chunk of one type costs one pass."""
        counts = self.s.page_types
        record = self._record_types
        with_data = seen = 0
        for ptype, name in _TYPES_BY_LIKELIHOOD:
            c = types.count(ptype)
            if c:
                counts[name] = counts.get(name, 0) + c
                record[name] = record.get(name, 0) + c
                if ptype in PAGE_TYPES_WITH_DATA:
                    with_data += c
                seen += c
                if seen == n:
                    break
        return with_data


# Empty records taken as a block (see LibxcParser._empty_records).
_EMPTY_BLOCK = 64 * 1024
_ZERO_LENGTH = bytes(4)
#: First byte of a type word -> 1 unless it is VERIFY's (0x0D).
_NOT_VERIFY = bytes(0 if b == LibxcRecordType.VERIFY else 1 for b in range(256))
#: Last byte of a type word -> 1 when the type is mandatory (high bit clear).
_MANDATORY = bytes(0 if b & 0x80 else 1 for b in range(256))
#: Byte -> 1 when not zero.
_NONZERO = bytes(1 if b else 0 for b in range(256))


def _flags(*columns: bytes) -> int:
    """The bytes of ``columns`` reduced to one flag byte each (1: some
    column is non-zero there), as a little-endian integer."""
    out = 0
    for column in columns:
        out |= int.from_bytes(column.translate(_NONZERO), "little")
    return out


def _count_set(flags: int, k: int) -> int:
    """How many of the first ``k`` flag bytes of ``flags`` are 1."""
    return flags.to_bytes(max(k, (flags.bit_length() + 7) // 8), "little")[:k].count(1)


# Byte tables for the pfn words (see _pfn_chunk).
_TYPE_OF = bytes(b >> 4 for b in range(256))  # the type: bits 60-63, byte 7's high nibble
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))
_HIGH_NIBBLE = bytes(b & 0xF0 for b in range(256))
#: Page types, the ones streams are made of first (see _count_types).
_TYPES_BY_LIKELIHOOD = sorted(PAGE_TYPE_NAMES.items(), key=lambda item: (item[0] not in (0, 15), item[0]))
#: The pfn words 1, 1, 1... and 0, 1, 2... of a whole chunk, little-endian.
_REPUNIT = b"\1\0\0\0\0\0\0\0" * (_PFN_CHUNK // PFN_WORD_SIZE)
_IOTA = b"".join(i.to_bytes(PFN_WORD_SIZE, "little") for i in range(_PFN_CHUNK // PFN_WORD_SIZE))
_FULL_RUN_TERMS = (int.from_bytes(_REPUNIT, "little"), int.from_bytes(_IOTA, "little"))


def _run_terms(size: int) -> Tuple[int, int]:
    """The repunit and the 0, 1, 2... of ``size`` bytes of pfn words, as
    integers (those of a whole chunk computed once)."""
    if size == len(_REPUNIT):
        return _FULL_RUN_TERMS
    return int.from_bytes(_REPUNIT[:size], "little"), int.from_bytes(_IOTA[:size], "little")


#: Top byte -> 0 when its type is valid and its reserved bits are clear.
_BAD_TOP = bytes(0 if (b >> 4) in VALID_PAGE_TYPES and not b & 0x0F else 1 for b in range(256))


def _raise_first_bad_word(raw: bytes, offset: int, index: int) -> None:
    """Finds the first word of a chunk that is wrong and raises its error."""
    arr = array("Q")
    arr.frombytes(raw)
    if sys.byteorder != "little":  # pragma: no cover
        arr.byteswap()
    for j, word in enumerate(arr):
        ptype = word >> PFN_TYPE_SHIFT
        if word & PFN_RESERVED_MASK or ptype not in VALID_PAGE_TYPES:
            raise _bad_pfn_word(word, ptype, offset + PFN_WORD_SIZE * j, index + j)
    raise AssertionError("a chunk flagged as bad has no bad word")  # pragma: no cover


def _either(values: Tuple[int, ...]) -> str:
    return " or ".join(str(v) for v in values)


def _bad_pfn_word(word: int, ptype: int, offset: int, index: int) -> StreamFormatError:
    if word & PFN_RESERVED_MASK:
        what = f"reserved bits set in PAGE_DATA pfn word 0x{word:016x}"
    else:
        what = f"invalid page type {ptype} in PAGE_DATA pfn word 0x{word:016x}"
    return fail(offset, f"{what} (index {index})", "bad pfn")


_Handler = Callable[[LibxcParser, _Record, LibxcHeaders], None]
_R = LibxcRecordType

#: Record type -> the handler of its body.  Every type in
#: ``format.LIBXC_RECORDS`` that the main stream may carry has one.
_HANDLERS: Dict[int, _Handler] = {
    _R.END: LibxcParser._nothing,
    _R.PAGE_DATA: LibxcParser._page_data,
    _R.X86_PV_INFO: LibxcParser._x86_pv_info,
    _R.X86_PV_P2M_FRAMES: LibxcParser._x86_pv_p2m_frames,
    _R.X86_PV_VCPU_BASIC: LibxcParser._x86_pv_vcpu,
    _R.X86_PV_VCPU_EXTENDED: LibxcParser._x86_pv_vcpu,
    _R.X86_PV_VCPU_XSAVE: LibxcParser._x86_pv_vcpu,
    _R.SHARED_INFO: LibxcParser._skip_body,
    _R.X86_TSC_INFO: LibxcParser._x86_tsc_info,
    _R.HVM_CONTEXT: LibxcParser._hvm_context,
    _R.HVM_PARAMS: LibxcParser._hvm_params,
    _R.X86_PV_VCPU_MSRS: LibxcParser._x86_pv_vcpu,
    _R.VERIFY: LibxcParser._nothing,
    _R.CHECKPOINT: LibxcParser._nothing,
    _R.STATIC_DATA_END: LibxcParser._static_data_end,
    _R.X86_CPUID_POLICY: LibxcParser._skip_body,
    _R.X86_MSR_POLICY: LibxcParser._skip_body,
}
