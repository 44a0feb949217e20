"""Streaming parser and validator for xl save files and migration streams.

Three layers can appear in one file (PROTOCOL.md B§9):

* the xl save-file header (``Xen saved domain, xl format``): magic, byte
  order, flags and optional data holding the domain configuration;
* the libxl migration stream v2 (``LibxlFmt``): a big-endian header, then
  records ``u32 type, u32 length, body, zero padding to 8``;
  ``LIBXC_CONTEXT`` (empty) says the libxc stream follows at once;
* the libxc migration stream v2/v3: image header (big-endian), domain
  header, then records in the same framing, up to and including ``END``
  (or, in a checkpointed stream, a ``CHECKPOINT`` after which libxl
  records up to ``CHECKPOINT_END`` interleave before libxc goes on).

Everything here reads a stream front to back, holding one record header and
at most a bounded chunk of a body at a time, so a file of any size is
checked in a few MiB.  Every problem raises :class:`~xensr.errors.StreamFormatError`
whose ``offset`` is the absolute byte offset of the offending field (or of
the first missing byte when the stream ends early).

The rules enforced are those of Xen 4.17's readers (``xl`` restore,
``libxl_stream_read.c``, ``xg_sr_restore*.c``) and of its
``verify-stream-v2``, whichever is stricter:

* magic/ident/marker, versions, byte order, reserved bits and fields;
* unknown mandatory xl flags; a legacy (pre-v2) xl stream;
* record lengths (libxc: at most 128 MiB), zero padding, fixed or minimum
  body sizes, reserved fields inside records;
* ``PAGE_DATA``: at least one pfn, length exactly header + pfns + one page
  per pfn whose type carries data; types 5-8 invalid; types BROKEN,
  XALLOC and XTAB carry no data; reserved pfn bits 52-59 clear;
* record order: LIBXC_CONTEXT first and once, X86_PV_INFO before other PV
  records and once, STATIC_DATA_END at most once and (v3) before any
  PAGE_DATA / X86_PV_P2M_FRAMES, v3-only records not in a v2 stream,
  records valid for the domain type only, CHECKPOINT_END only inside a
  checkpoint, nothing after the final END.
"""

from __future__ import annotations

import enum
import json
import os
import select as _select
import stat
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from .errors import StreamFormatError

__all__ = [
    "XL_MAGIC",
    "XL_BYTEORDER",
    "XL_FLAG_JSON",
    "XL_FLAG_STREAMV2",
    "XL_HEADER",
    "LIBXL_IDENT",
    "LIBXL_VERSION",
    "LIBXL_HEADER",
    "LIBXC_MARKER",
    "LIBXC_ID",
    "LIBXC_IHDR",
    "LIBXC_DHDR",
    "RECORD_HEADER",
    "REC_LENGTH_MAX",
    "PAGE_SIZE",
    "LibxlRecordType",
    "LibxcRecordType",
    "EmulatorId",
    "DomainType",
    "PageType",
    "StreamReader",
    "XlHeader",
    "LibxlHeader",
    "LibxcHeaders",
    "LibxlRecord",
    "StreamParser",
    "Summary",
    "detect_format",
    "scan_file",
    "scan_fd",
    "format_summary",
]

# --------------------------------------------------------------------------
# Layouts and numbers (PROTOCOL.md B§9)

#: xl save-file magic: exactly 32 bytes, no terminating NUL of its own.
XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
assert len(XL_MAGIC) == 32
XL_BYTEORDER = 0x01020304
XL_FLAG_JSON = 1 << 0
XL_FLAG_STREAMV2 = 1 << 1
XL_FLAGS_KNOWN = XL_FLAG_JSON | XL_FLAG_STREAMV2
#: struct save_file_header: magic, byteorder, mandatory_flags,
#: optional_flags, optional_data_len (native order).
XL_HEADER = struct.Struct("=32sIIII")

LIBXL_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_VERSION = 2
LIBXL_OPT_BIG_ENDIAN = 1 << 0
LIBXL_OPT_LEGACY = 1 << 1
LIBXL_HEADER = struct.Struct(">QII")

LIBXC_MARKER = 0xFFFFFFFFFFFFFFFF
LIBXC_ID = 0x58454E46  # "XENF"
LIBXC_OPT_BIG_ENDIAN = 1 << 0
LIBXC_IHDR = struct.Struct(">QIIHHI")
LIBXC_DHDR = struct.Struct("<IHHII")

#: Record header of both layers: u32 type, u32 body length (little-endian;
#: big-endian streams are rejected by both readers).
RECORD_HEADER = struct.Struct("<II")
EMULATOR_HEADER = struct.Struct("<II")
#: Largest libxc record body xc_domain_restore accepts.
REC_LENGTH_MAX = 128 << 20
REC_ALIGN = 8
REC_TYPE_OPTIONAL = 0x80000000
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

PFN_MASK = (1 << 52) - 1
PFN_RESERVED_MASK = ((1 << 60) - 1) & ~PFN_MASK
PFN_TYPE_SHIFT = 60

_U32 = struct.Struct("<I")


class LibxlRecordType(enum.IntEnum):
    END = 0
    LIBXC_CONTEXT = 1
    EMULATOR_XENSTORE_DATA = 2
    EMULATOR_CONTEXT = 3
    CHECKPOINT_END = 4
    CHECKPOINT_STATE = 5


class LibxcRecordType(enum.IntEnum):
    END = 0x00
    PAGE_DATA = 0x01
    X86_PV_INFO = 0x02
    X86_PV_P2M_FRAMES = 0x03
    X86_PV_VCPU_BASIC = 0x04
    X86_PV_VCPU_EXTENDED = 0x05
    X86_PV_VCPU_XSAVE = 0x06
    SHARED_INFO = 0x07
    X86_TSC_INFO = 0x08
    HVM_CONTEXT = 0x09
    HVM_PARAMS = 0x0A
    TOOLSTACK = 0x0B
    X86_PV_VCPU_MSRS = 0x0C
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    STATIC_DATA_END = 0x10
    X86_CPUID_POLICY = 0x11
    X86_MSR_POLICY = 0x12


class EmulatorId(enum.IntEnum):
    UNKNOWN = 0
    QEMU_TRADITIONAL = 1
    QEMU_UPSTREAM = 2


class DomainType(enum.IntEnum):
    X86_PV = 1
    X86_HVM = 2


class PageType(enum.IntEnum):
    """Page type in bits 63-60 of a PAGE_DATA pfn word (XEN_DOMCTL_PFINFO_*)."""

    NOTAB = 0x0
    L1TAB = 0x1
    L2TAB = 0x2
    L3TAB = 0x3
    L4TAB = 0x4
    L1TAB_PINNED = 0x9
    L2TAB_PINNED = 0xA
    L3TAB_PINNED = 0xB
    L4TAB_PINNED = 0xC
    BROKEN = 0xD
    XALLOC = 0xE
    XTAB = 0xF


#: Types 5-8 are not page types; BROKEN, XALLOC and XTAB carry no data.
_VALID_TYPES = frozenset(int(t) for t in PageType)
_TYPES_WITH_DATA = frozenset(t for t in _VALID_TYPES if t < PageType.BROKEN)

_DOMAIN_NAMES = {DomainType.X86_PV: "x86 PV", DomainType.X86_HVM: "x86 HVM"}
_EMULATOR_NAMES = {
    EmulatorId.UNKNOWN: "unknown",
    EmulatorId.QEMU_TRADITIONAL: "qemu-traditional",
    EmulatorId.QEMU_UPSTREAM: "qemu-upstream",
}

_R = LibxcRecordType
_PV_ONLY = frozenset(
    {
        _R.X86_PV_INFO,
        _R.X86_PV_P2M_FRAMES,
        _R.X86_PV_VCPU_BASIC,
        _R.X86_PV_VCPU_EXTENDED,
        _R.X86_PV_VCPU_XSAVE,
        _R.X86_PV_VCPU_MSRS,
        _R.SHARED_INFO,
    }
)
_HVM_ONLY = frozenset({_R.HVM_CONTEXT, _R.HVM_PARAMS})
_V3_ONLY = frozenset({_R.STATIC_DATA_END, _R.X86_CPUID_POLICY, _R.X86_MSR_POLICY})
_PV_VCPU = frozenset(
    {_R.X86_PV_VCPU_BASIC, _R.X86_PV_VCPU_EXTENDED, _R.X86_PV_VCPU_XSAVE, _R.X86_PV_VCPU_MSRS}
)
_PV_NEED_INFO = _PV_VCPU | {_R.X86_PV_P2M_FRAMES, _R.SHARED_INFO}
#: Records whose body must be empty.
_EMPTY_LIBXC = frozenset({_R.END, _R.VERIFY, _R.CHECKPOINT, _R.STATIC_DATA_END})

# Bounds on what a scan remembers, so that memory stays small whatever the
# stream holds.
_PFN_CHUNK = 64 * 1024  # bytes of pfn array read at a time
_SKIP_CHUNK = 1 << 20
_BITMAP_LEAF_BITS = 15  # one 4 KiB leaf covers 32768 pfns
_BITMAP_MAX_LEAVES = 8192  # 32 MiB of bitmap at most
_MAX_VCPU_IDS = 65536
_MAX_LISTED = 1000
_MAX_TYPE_NAMES = 64
_MAX_HVM_DESCRIPTORS = 1 << 16
_MAX_JSON_CONFIG = 16 << 20


def libxl_record_name(rtype: int) -> str:
    try:
        return LibxlRecordType(rtype).name
    except ValueError:
        return f"0x{rtype:08x}"


def libxc_record_name(rtype: int) -> str:
    try:
        return LibxcRecordType(rtype).name
    except ValueError:
        return f"0x{rtype:08x}"


def _pad(length: int) -> int:
    return -length % REC_ALIGN


# --------------------------------------------------------------------------
# Exact reading with offsets


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
        self._file = open(fd, "rb", buffering=_SKIP_CHUNK, closefd=False) if readahead else None
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

    def read(self, n: int) -> bytes:
        """Reads up to ``n`` bytes; fewer only at end of stream."""
        if n <= 0:
            return b""
        parts = []
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
            return
        done = 0
        while done < n:
            chunk = self.read(min(n - done, _SKIP_CHUNK))
            if not chunk:
                raise self._truncated(what, done, n)
            done += len(chunk)

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


# --------------------------------------------------------------------------
# Parsed pieces


@dataclass
class XlHeader:
    """The xl save-file header and its optional data."""

    offset: int
    byteorder: int
    mandatory_flags: int
    optional_flags: int
    optional_data_len: int
    #: The domain configuration exactly as stored (JSON text with its
    #: trailing NUL when ``config_is_json``), or None when there is none.
    config: Optional[bytes] = None
    config_offset: Optional[int] = None
    config_len: int = 0
    #: Bytes of optional data after the configuration (xl ignores them).
    extra_optional_data: int = 0
    #: Parsed JSON configuration (when JSON and not too large to parse).
    config_json: Optional[Any] = None
    end_offset: int = 0

    @property
    def config_is_json(self) -> bool:
        return bool(self.mandatory_flags & XL_FLAG_JSON)

    @property
    def stream_v2(self) -> bool:
        return bool(self.mandatory_flags & XL_FLAG_STREAMV2)

    @property
    def config_text(self) -> Optional[str]:
        """The configuration as text, without the trailing NUL of JSON."""
        if self.config is None:
            return None
        data = self.config
        if self.config_is_json and data.endswith(b"\0"):
            data = data[:-1]
        return data.decode("utf-8", errors="replace")

    @property
    def domain_name(self) -> Optional[str]:
        cfg = self.config_json
        if isinstance(cfg, dict):
            c_info = cfg.get("c_info")
            if isinstance(c_info, dict) and isinstance(c_info.get("name"), str):
                return c_info["name"]
        return None

    def flag_names(self) -> List[str]:
        names = []
        if self.mandatory_flags & XL_FLAG_JSON:
            names.append("JSON")
        if self.mandatory_flags & XL_FLAG_STREAMV2:
            names.append("STREAMv2")
        return names


@dataclass
class LibxlHeader:
    offset: int
    version: int
    options: int

    @property
    def legacy(self) -> bool:
        return bool(self.options & LIBXL_OPT_LEGACY)


@dataclass
class LibxcHeaders:
    offset: int
    version: int
    options: int
    domain_type: int
    page_shift: int
    xen_major: int
    xen_minor: int

    @property
    def domain_type_name(self) -> str:
        return _DOMAIN_NAMES.get(self.domain_type, f"type {self.domain_type}")  # type: ignore[call-overload]

    @property
    def legacy_converted(self) -> bool:
        return self.xen_major == 0


@dataclass
class LibxlRecord:
    """One libxl record.  ``data`` is the body after the emulator sub-header
    (emulator records) or the whole body, when it was kept."""

    offset: int
    type: int
    length: int
    emulator_id: Optional[int] = None
    emulator_index: Optional[int] = None
    data: Optional[bytes] = None

    @property
    def name(self) -> str:
        return libxl_record_name(self.type)

    @property
    def wire_size(self) -> int:
        return RECORD_HEADER.size + self.length + _pad(self.length)

    def xenstore_pairs(self) -> List[Tuple[str, str]]:
        """The (key, value) pairs of an EMULATOR_XENSTORE_DATA record."""
        if self.type != LibxlRecordType.EMULATOR_XENSTORE_DATA or self.data is None:
            raise ValueError("not an EMULATOR_XENSTORE_DATA record with its data")
        if not self.data:
            return []
        parts = self.data[:-1].split(b"\0")
        return [
            (k.decode("utf-8", "replace"), v.decode("utf-8", "replace"))
            for k, v in zip(parts[0::2], parts[1::2])
        ]


# --------------------------------------------------------------------------
# Statistics gathered by a scan


class _PfnSet:
    """Distinct pfns seen, as a sparse bitmap of 4 KiB leaves (bounded)."""

    def __init__(self) -> None:
        self._leaves: Dict[int, bytearray] = {}
        self.count = 0
        self.max_pfn: Optional[int] = None
        self.overflowed = False

    def add(self, pfn: int) -> None:
        if self.max_pfn is None or pfn > self.max_pfn:
            self.max_pfn = pfn
        key = pfn >> _BITMAP_LEAF_BITS
        leaf = self._leaves.get(key)
        if leaf is None:
            if len(self._leaves) >= _BITMAP_MAX_LEAVES:
                self.overflowed = True
                return
            leaf = self._leaves[key] = bytearray(1 << (_BITMAP_LEAF_BITS - 3))
        bit = pfn & ((1 << _BITMAP_LEAF_BITS) - 1)
        mask = 1 << (bit & 7)
        idx = bit >> 3
        if not leaf[idx] & mask:
            leaf[idx] |= mask
            self.count += 1


@dataclass
class _TypeStat:
    count: int = 0
    bytes: int = 0


@dataclass
class Summary:
    """What a scan found.  ``to_dict()`` is the ``inspect --json`` document."""

    path: Optional[str] = None
    size: Optional[int] = None
    format: str = ""
    xl: Optional[XlHeader] = None
    libxl: Optional[LibxlHeader] = None
    libxc: Optional[LibxcHeaders] = None
    libxl_records: List[LibxlRecord] = field(default_factory=list)
    libxl_record_count: int = 0
    libxl_by_type: Dict[str, _TypeStat] = field(default_factory=dict)
    libxc_by_type: Dict[str, _TypeStat] = field(default_factory=dict)
    libxc_offset: Optional[int] = None
    libxc_bytes: int = 0
    page_records: int = 0
    pages: int = 0
    pages_with_data: int = 0
    page_types: Dict[str, int] = field(default_factory=dict)
    pfns: _PfnSet = field(default_factory=_PfnSet)
    pv_guest_width: Optional[int] = None
    pv_pt_levels: Optional[int] = None
    vcpu_ids: Set[int] = field(default_factory=set)
    vcpu_ids_truncated: bool = False
    hvm_vcpus: Optional[int] = None
    vcpu_source: Optional[str] = None
    tsc: Optional[Dict[str, int]] = None
    hvm_params: Optional[int] = None
    checkpoints: int = 0
    checkpoint_ends: int = 0
    pages_per_checkpoint: List[int] = field(default_factory=list)
    optional_records_skipped: int = 0
    #: "END" when the stream ends with its END record, "checkpoint" when a
    #: checkpointed stream stops after a complete checkpoint (no END: the
    #: receiver fails over to the last checkpoint).
    ended: str = ""
    end_offset: int = 0

    # -- derived

    @property
    def vcpus(self) -> Optional[int]:
        if self.vcpu_source == "HVM_CONTEXT":
            return self.hvm_vcpus
        if self.vcpu_ids:
            return len(self.vcpu_ids)
        return None

    def _count(self, table: Dict[str, _TypeStat], name: str, wire: int) -> None:
        st = table.get(name)
        if st is None:
            if name.startswith("0x") and len(table) >= _MAX_TYPE_NAMES:
                name = "other"  # unknown types: bounded, whatever the stream holds
                st = table.get(name)
            if st is None:
                st = table[name] = _TypeStat()
        st.count += 1
        st.bytes += wire

    def to_dict(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {
            "file": self.path,
            "size": self.size,
            "format": self.format,
            "valid": True,
            "ended": self.ended,
            "end_offset": self.end_offset,
        }
        if self.xl is not None:
            x = self.xl
            doc["xl_header"] = {
                "offset": x.offset,
                "byteorder": f"0x{x.byteorder:08x}",
                "mandatory_flags": x.mandatory_flags,
                "mandatory_flag_names": x.flag_names(),
                "optional_flags": x.optional_flags,
                "optional_data_length": x.optional_data_len,
                "config_offset": x.config_offset,
                "config_length": x.config_len,
                "config_format": (None if not x.config_len else ("json" if x.config_is_json else "xl")),
                "config_parsed": x.config_json is not None,
                "domain_name": x.domain_name,
                "extra_optional_data": x.extra_optional_data,
                "length": x.end_offset - x.offset,
            }
        if self.libxl is not None:
            doc["libxl"] = {
                "offset": self.libxl.offset,
                "version": self.libxl.version,
                "options": self.libxl.options,
                "legacy_converted": self.libxl.legacy,
                "record_count": self.libxl_record_count,
                "records": [
                    {
                        "offset": r.offset,
                        "type": r.type,
                        "name": r.name,
                        "length": r.length,
                        **(
                            {
                                "emulator": _EMULATOR_NAMES.get(r.emulator_id, str(r.emulator_id)),  # type: ignore[call-overload]
                                "emulator_index": r.emulator_index,
                            }
                            if r.emulator_id is not None
                            else {}
                        ),
                    }
                    for r in self.libxl_records
                ],
                "records_listed": len(self.libxl_records),
                "by_type": {k: vars(v) for k, v in self.libxl_by_type.items()},
            }
        if self.libxc is not None:
            h = self.libxc
            doc["libxc"] = {
                "offset": h.offset,
                "version": h.version,
                "options": h.options,
                "domain_type": h.domain_type_name,
                "page_shift": h.page_shift,
                "page_size": 1 << h.page_shift,
                "xen_version": None if h.legacy_converted else f"{h.xen_major}.{h.xen_minor}",
                "legacy_converted": h.legacy_converted,
                "bytes": self.libxc_bytes,
                "by_type": {k: vars(v) for k, v in self.libxc_by_type.items()},
                "optional_records_skipped": self.optional_records_skipped,
            }
            if self.pv_guest_width is not None:
                doc["libxc"]["pv_guest_width"] = self.pv_guest_width
                doc["libxc"]["pv_pt_levels"] = self.pv_pt_levels
            if self.tsc is not None:
                doc["libxc"]["tsc"] = self.tsc
            if self.hvm_params is not None:
                doc["libxc"]["hvm_params"] = self.hvm_params
            doc["pages"] = {
                "records": self.page_records,
                "total": self.pages,
                "with_data": self.pages_with_data,
                "distinct_pfns": None if self.pfns.overflowed else self.pfns.count,
                "resent": None if self.pfns.overflowed else self.pages - self.pfns.count,
                "max_pfn": self.pfns.max_pfn,
                "by_type": dict(self.page_types),
            }
            doc["vcpus"] = {
                "count": self.vcpus,
                "source": self.vcpu_source,
                "ids": sorted(self.vcpu_ids) if self.vcpu_source != "HVM_CONTEXT" else None,
                "ids_truncated": self.vcpu_ids_truncated,
            }
            doc["checkpoints"] = {
                "count": self.checkpoints,
                "checkpoint_ends": self.checkpoint_ends,
                "pages_per_checkpoint": list(self.pages_per_checkpoint),
            }
        return doc


# --------------------------------------------------------------------------
# The parser


class StreamParser:
    """Parses the layers of a stream from a :class:`StreamReader`.

    The pieces can be used one by one (the xl file reader reads the
    preamble, lets a helper consume the libxc stream, then reads the rest)
    or all at once with :meth:`scan`.  Statistics go into ``summary``.
    """

    def __init__(self, reader: StreamReader, summary: Optional[Summary] = None):
        self.r = reader
        self.s = summary if summary is not None else Summary()
        # libxc state
        self._seen_static_data_end = False
        self._seen_pv_info = False
        self._pages_since_checkpoint = 0
        # libxl state: None before LIBXC_CONTEXT, then "libxc",
        # "checkpoint" (between libxc CHECKPOINT and CHECKPOINT_END),
        # "trailer" (after libxc END), "done" (after END).
        self.libxl_phase: Optional[str] = None

    def _error(self, offset: int, message: str, reason: str = "") -> StreamFormatError:
        return StreamFormatError(message, offset=offset, reason=reason or message)

    # ---------------------------------------------------------------- xl

    def parse_xl_header(self, *, max_config: Optional[int] = None, skip_large_config: bool = True) -> XlHeader:
        """Reads the xl header and its optional data.

        A configuration larger than ``max_config`` (default 16 MiB) is
        streamed past (not kept: ``config`` stays None) when
        ``skip_large_config``, else it is an error."""
        if max_config is None:
            max_config = _MAX_JSON_CONFIG
        r = self.r
        start = r.offset
        raw = r.read_exact(XL_HEADER.size, "the xl save-file header")
        magic, byteorder, mflags, oflags, optlen = XL_HEADER.unpack(raw)
        if magic != XL_MAGIC:
            bad = next(i for i in range(32) if magic[i] != XL_MAGIC[i])
            raise self._error(start + bad, "not an xl save file: bad magic", "bad xl magic")
        if byteorder != XL_BYTEORDER:
            if byteorder == 0x04030201:
                msg = "xl header byte order 0x04030201: written on a host of the other endianness"
            else:
                msg = f"xl header byte order 0x{byteorder:08x} is not 0x01020304"
            raise self._error(start + 32, msg, "bad byte order")
        unknown = mflags & ~XL_FLAGS_KNOWN
        if unknown:
            raise self._error(
                start + 36,
                f"xl header has unknown mandatory flags 0x{unknown:x} (of 0x{mflags:x})",
                "unknown mandatory flags",
            )
        hdr = XlHeader(
            offset=start,
            byteorder=byteorder,
            mandatory_flags=mflags,
            optional_flags=oflags,
            optional_data_len=optlen,
        )
        opt_start = r.offset
        if optlen:
            # xl: u32 config_len, then config_len bytes; the rest is ignored.
            if optlen < 4:
                raise self._error(
                    start + 44,
                    f"xl optional data of {optlen} bytes cannot hold the 4-byte configuration length",
                    "optional data too short",
                )
            (clen,) = _U32.unpack(r.read_exact(4, "the xl configuration length"))
            if clen > optlen - 4:
                raise self._error(
                    opt_start,
                    f"xl configuration length {clen} exceeds the {optlen - 4} bytes of optional data left",
                    "configuration length exceeds optional data",
                )
            hdr.config_len = clen
            hdr.config_offset = r.offset
            if clen > max_config:
                if not skip_large_config:
                    raise self._error(
                        opt_start,
                        f"xl configuration of {clen} bytes exceeds the {max_config}-byte limit",
                        "configuration too large",
                    )
                # Stream past it; only the terminating NUL can be checked.
                r.skip(clen - 1, "the xl domain configuration")
                last = r.read_exact(1, "the xl domain configuration")
                if hdr.config_is_json and last != b"\0":
                    raise self._error(
                        r.offset - 1, "JSON domain configuration is not NUL-terminated", "configuration not NUL-terminated"
                    )
            elif clen:
                hdr.config = r.read_exact(clen, "the xl domain configuration")
                if hdr.config_is_json:
                    hdr.config_json = self._check_json_config(hdr.config, hdr.config_offset)
            hdr.extra_optional_data = optlen - 4 - clen
            r.skip(hdr.extra_optional_data, "the xl optional data")
        hdr.end_offset = r.offset
        if not hdr.stream_v2:
            raise self._error(
                start + 36,
                "xl header lacks the STREAMv2 flag: a legacy (pre-Xen 4.6) stream, which is not supported",
                "legacy stream",
            )
        self.s.xl = hdr
        return hdr

    def _check_json_config(self, config: bytes, offset: int) -> Optional[Any]:
        if not config.endswith(b"\0"):
            raise self._error(
                offset + len(config) - 1,
                "JSON domain configuration is not NUL-terminated",
                "configuration not NUL-terminated",
            )
        body = config[:-1]
        nul = body.find(b"\0")
        if nul >= 0:
            raise self._error(offset + nul, "JSON domain configuration contains a NUL byte", "NUL in configuration")
        if len(body) > _MAX_JSON_CONFIG:
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._error(offset + e.start, "JSON domain configuration is not UTF-8", "configuration not UTF-8")
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            pos = len(text[: e.pos].encode("utf-8"))
            raise self._error(
                offset + pos, f"JSON domain configuration does not parse: {e.msg}", "configuration not JSON"
            )

    # ------------------------------------------------------------- libxl

    def parse_libxl_header(self) -> LibxlHeader:
        r = self.r
        start = r.offset
        raw = r.read_exact(LIBXL_HEADER.size, "the libxl stream header")
        ident, version, options = LIBXL_HEADER.unpack(raw)
        if ident != LIBXL_IDENT:
            want = LIBXL_HEADER.pack(LIBXL_IDENT, 0, 0)[:8]
            bad = next(i for i in range(8) if raw[i] != want[i])
            raise self._error(start + bad, f"bad libxl stream ident 0x{ident:016x}", "bad libxl ident")
        if version != LIBXL_VERSION:
            raise self._error(
                start + 8, f"libxl stream version {version}, expected {LIBXL_VERSION}", "bad libxl version"
            )
        if options & LIBXL_OPT_BIG_ENDIAN:
            raise self._error(start + 12, "big-endian libxl stream is not supported", "big-endian stream")
        reserved = options & ~(LIBXL_OPT_BIG_ENDIAN | LIBXL_OPT_LEGACY)
        if reserved:
            raise self._error(
                start + 12, f"reserved bits 0x{reserved:x} set in the libxl stream options", "reserved options"
            )
        hdr = LibxlHeader(offset=start, version=version, options=options)
        self.s.libxl = hdr
        return hdr

    def read_libxl_record(self, *, keep_data: bool = False, max_data: int = 256 << 20) -> LibxlRecord:
        """Reads and checks one libxl record in the current phase.

        Bodies are streamed; ``keep_data`` keeps emulator record data (up
        to ``max_data`` bytes) in ``LibxlRecord.data``.
        """
        r = self.r
        start = r.offset
        phase = self.libxl_phase
        if phase == "done":
            raise self._error(start, "data after the libxl END record", "data after END")
        if phase == "libxc":
            raise RuntimeError("the libxc stream has not been consumed yet (call libxc_returned())")
        what = "a libxl record header"
        if phase == "trailer":
            what += " (the stream has no END record)"
        elif phase == "checkpoint":
            what += " (the checkpoint has no CHECKPOINT_END record)"
        rtype, length = RECORD_HEADER.unpack(r.read_exact(RECORD_HEADER.size, what))
        rec = LibxlRecord(offset=start, type=rtype, length=length)
        name = rec.name
        T = LibxlRecordType

        if rtype not in (T.END, T.LIBXC_CONTEXT, T.EMULATOR_XENSTORE_DATA, T.EMULATOR_CONTEXT, T.CHECKPOINT_END):
            if rtype == T.CHECKPOINT_STATE:
                msg = "CHECKPOINT_STATE record in the main stream (it belongs on the COLO back channel)"
            elif rtype & REC_TYPE_OPTIONAL:
                msg = f"unknown optional libxl record type 0x{rtype:08x} (libxl 4.17 rejects it)"
            else:
                msg = f"unknown libxl record type 0x{rtype:08x}"
            raise self._error(start, msg, "unknown record type")

        # Sequence rules.
        if phase is None and rtype != T.LIBXC_CONTEXT:
            raise self._error(start, f"first libxl record is {name}, expected LIBXC_CONTEXT", "record order")
        if rtype == T.LIBXC_CONTEXT and phase is not None:
            raise self._error(start, "second LIBXC_CONTEXT record", "record order")
        if rtype == T.CHECKPOINT_END and phase != "checkpoint":
            raise self._error(start, "CHECKPOINT_END record outside a checkpoint", "record order")
        if rtype == T.END and phase == "checkpoint":
            raise self._error(start, "END record inside a checkpoint (before CHECKPOINT_END)", "record order")

        # Body.
        if rtype in (T.END, T.LIBXC_CONTEXT, T.CHECKPOINT_END):
            if length != 0:
                raise self._error(start + 4, f"{name} record has length {length}, must be 0", "bad record length")
        else:
            if length < EMULATOR_HEADER.size:
                raise self._error(
                    start + 4,
                    f"{name} record length {length} cannot hold the 8-byte emulator header",
                    "bad record length",
                )
            emu_id, index = EMULATOR_HEADER.unpack(r.read_exact(EMULATOR_HEADER.size, f"the {name} emulator header"))
            if emu_id not in _EMULATOR_NAMES:
                raise self._error(start + 8, f"{name} record has unknown emulator id {emu_id}", "unknown emulator")
            rec.emulator_id = emu_id
            rec.emulator_index = index
            body = length - EMULATOR_HEADER.size
            if keep_data:
                if body > max_data:
                    raise self._error(
                        start + 4,
                        f"{name} record of {length} bytes exceeds the {max_data}-byte limit for records kept in memory",
                        "record too large",
                    )
                rec.data = r.read_exact(body, f"the {name} record body")
                if rtype == T.EMULATOR_XENSTORE_DATA:
                    self._check_xenstore(rec.data.count(b"\0"), rec.data[-1:], body, start + 16)
            elif rtype == T.EMULATOR_XENSTORE_DATA:
                self._stream_xenstore(body, start + 16)
            else:
                r.skip(body, f"the {name} record body")
        self._check_padding(length, name)

        # State transitions and statistics.
        self.s.libxl_record_count += 1
        if len(self.s.libxl_records) < _MAX_LISTED:
            self.s.libxl_records.append(
                LibxlRecord(rec.offset, rec.type, rec.length, rec.emulator_id, rec.emulator_index)
            )
        self.s._count(self.s.libxl_by_type, name, rec.wire_size)
        if rtype == T.LIBXC_CONTEXT:
            self.libxl_phase = "libxc"
        elif rtype == T.CHECKPOINT_END:
            self.s.checkpoint_ends += 1
            self.libxl_phase = "libxc"
        elif rtype == T.END:
            self.libxl_phase = "done"
        return rec

    def _check_xenstore(self, nuls: int, last: bytes, length: int, offset: int) -> None:
        """Key/value data: NUL-terminated strings, an even number of them."""
        if length and last != b"\0":
            raise self._error(offset + length - 1, "emulator xenstore data is not NUL-terminated", "xenstore data")
        if nuls % 2:
            raise self._error(
                offset, f"emulator xenstore data holds {nuls} strings, not key/value pairs", "xenstore data"
            )

    def _stream_xenstore(self, length: int, offset: int) -> None:
        nuls = 0
        last = b""
        left = length
        while left:
            chunk = self.r.read_exact(min(left, _SKIP_CHUNK), "the EMULATOR_XENSTORE_DATA record body")
            nuls += chunk.count(b"\0")
            last = chunk[-1:]
            left -= len(chunk)
        self._check_xenstore(nuls, last, length, offset)

    def _check_padding(self, length: int, name: str) -> None:
        n = _pad(length)
        if n:
            start = self.r.offset
            pad = self.r.read_exact(n, f"the padding of the {name} record")
            if pad.strip(b"\0"):
                bad = next(i for i, b in enumerate(pad) if b)
                raise self._error(start + bad, f"non-zero padding after the {name} record", "non-zero padding")

    def read_libxl_section(self, **kw: Any) -> List[LibxlRecord]:
        """After the libxc stream handed back (END or CHECKPOINT): reads libxl
        records up to and including END (or CHECKPOINT_END)."""
        out = []
        while True:
            rec = self.read_libxl_record(**kw)
            out.append(rec)
            if rec.type in (LibxlRecordType.END, LibxlRecordType.CHECKPOINT_END):
                return out

    def libxc_returned(self, how: str) -> None:
        """Tells the parser how the libxc stream handed back: "end" or
        "checkpoint".  (Used when something else consumed the libxc part.)"""
        if how == "end":
            self.libxl_phase = "trailer"
        elif how == "checkpoint":
            self.libxl_phase = "checkpoint"
        else:
            raise ValueError(how)

    def check_eof(self) -> None:
        if not self.r.at_eof():
            start = self.r.offset
            raise self._error(start, "trailing data after the final END record", "trailing data")

    # ------------------------------------------------------------- libxc

    def parse_libxc_headers(self) -> LibxcHeaders:
        r = self.r
        start = r.offset
        raw = r.read_exact(LIBXC_IHDR.size, "the libxc image header")
        marker, ident, version, options, res1, res2 = LIBXC_IHDR.unpack(raw)
        if marker != LIBXC_MARKER:
            bad = next(i for i in range(8) if raw[i] != 0xFF)
            raise self._error(start + bad, f"bad libxc image marker 0x{marker:016x}", "bad libxc marker")
        if ident != LIBXC_ID:
            want = struct.pack(">I", LIBXC_ID)
            bad = next(i for i in range(4) if raw[8 + i] != want[i])
            raise self._error(start + 8 + bad, f"bad libxc image id 0x{ident:08x}", "bad libxc id")
        if not 2 <= version <= 3:
            raise self._error(start + 12, f"libxc stream version {version}, expected 2 or 3", "bad libxc version")
        if options & LIBXC_OPT_BIG_ENDIAN:
            raise self._error(start + 16, "big-endian libxc stream is not supported", "big-endian stream")
        if options & ~LIBXC_OPT_BIG_ENDIAN:
            raise self._error(
                start + 16, f"reserved bits 0x{options & ~1:x} set in the libxc image options", "reserved options"
            )
        if res1:
            raise self._error(start + 18, "reserved field of the libxc image header is not zero", "reserved field")
        if res2:
            raise self._error(start + 20, "reserved field of the libxc image header is not zero", "reserved field")
        dstart = r.offset
        dtype, page_shift, dres, major, minor = LIBXC_DHDR.unpack(
            r.read_exact(LIBXC_DHDR.size, "the libxc domain header")
        )
        if dtype not in (DomainType.X86_PV, DomainType.X86_HVM):
            raise self._error(dstart, f"unknown libxc domain type {dtype}", "unknown domain type")
        if page_shift != PAGE_SHIFT:
            raise self._error(dstart + 4, f"libxc page shift {page_shift}, expected {PAGE_SHIFT}", "bad page shift")
        if dres:
            raise self._error(dstart + 6, "reserved field of the libxc domain header is not zero", "reserved field")
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

    def scan_libxc_records(self, *, eof_ok: bool = False) -> str:
        """Reads libxc records up to END or CHECKPOINT.

        Returns "end", "checkpoint", or "eof" when ``eof_ok`` and the stream
        ends cleanly before the first record header (the end of a
        checkpointed stream whose sender stopped after a checkpoint).
        """
        hdr = self.s.libxc
        assert hdr is not None, "parse_libxc_headers() first"
        r = self.r
        if eof_ok and r.at_eof():
            return "eof"
        while True:
            start = r.offset
            rtype, length = RECORD_HEADER.unpack(
                r.read_exact(
                    RECORD_HEADER.size,
                    "a libxc record header (the libxc stream has no END record)",
                )
            )
            name = libxc_record_name(rtype)
            if length > REC_LENGTH_MAX:
                raise self._error(
                    start + 4,
                    f"libxc {name} record length {length} exceeds the maximum {REC_LENGTH_MAX}",
                    "record too long",
                )
            self._libxc_record(start, rtype, length, name, hdr)
            self._check_padding(length, name)
            wire = RECORD_HEADER.size + length + _pad(length)
            self.s.libxc_bytes += wire
            self.s._count(self.s.libxc_by_type, name, wire)
            if rtype == LibxcRecordType.END:
                return "end"
            if rtype == LibxcRecordType.CHECKPOINT:
                self.s.checkpoints += 1
                if len(self.s.pages_per_checkpoint) < _MAX_LISTED:
                    self.s.pages_per_checkpoint.append(self._pages_since_checkpoint)
                self._pages_since_checkpoint = 0
                return "checkpoint"

    def _libxc_record(self, start: int, rtype: int, length: int, name: str, hdr: LibxcHeaders) -> None:
        r = self.r
        R = LibxcRecordType
        known = rtype in R._value2member_map_
        if not known:
            if rtype & REC_TYPE_OPTIONAL:
                self.s.optional_records_skipped += 1
                r.skip(length, f"the optional libxc record 0x{rtype:08x}")
                return
            raise self._error(start, f"unknown mandatory libxc record type 0x{rtype:08x}", "unknown record type")
        if rtype == R.TOOLSTACK:
            raise self._error(start, "deprecated TOOLSTACK record (Xen 4.17 does not accept it)", "bad record type")
        if rtype == R.CHECKPOINT_DIRTY_PFN_LIST:
            raise self._error(
                start,
                "CHECKPOINT_DIRTY_PFN_LIST record in the main stream (it belongs on the COLO back channel)",
                "bad record type",
            )
        is_pv = hdr.domain_type == DomainType.X86_PV
        if rtype in _PV_ONLY and not is_pv:
            raise self._error(start, f"{name} record in an x86 HVM stream", "record not valid for domain type")
        if rtype in _HVM_ONLY and is_pv:
            raise self._error(start, f"{name} record in an x86 PV stream", "record not valid for domain type")
        if rtype in _V3_ONLY and hdr.version < 3:
            raise self._error(start, f"{name} record in a version {hdr.version} libxc stream", "record order")

        def want_len(ok: bool, expect: str) -> None:
            if not ok:
                raise self._error(
                    start + 4, f"libxc {name} record length {length}, expected {expect}", "bad record length"
                )

        if rtype in _EMPTY_LIBXC:
            want_len(length == 0, "0")
            if rtype == R.STATIC_DATA_END:
                if self._seen_static_data_end:
                    raise self._error(start, "second STATIC_DATA_END record", "record order")
                self._seen_static_data_end = True
            return
        if rtype == R.PAGE_DATA:
            self._page_data(start, length, hdr)
            return
        if rtype == R.X86_PV_INFO:
            want_len(length == 8, "8")
            if self._seen_pv_info:
                raise self._error(start, "second X86_PV_INFO record", "record order")
            width, levels, res1, res2 = struct.unpack("<BBHI", r.read_exact(8, "the X86_PV_INFO record body"))
            if width not in (4, 8):
                raise self._error(start + 8, f"X86_PV_INFO guest width {width}, expected 4 or 8", "bad record")
            if levels not in (3, 4):
                raise self._error(start + 9, f"X86_PV_INFO page-table levels {levels}, expected 3 or 4", "bad record")
            if res1 or res2:
                raise self._error(start + 10, "reserved field of X86_PV_INFO is not zero", "reserved field")
            self._seen_pv_info = True
            self.s.pv_guest_width = width
            self.s.pv_pt_levels = levels
            return
        if rtype in _PV_NEED_INFO and not self._seen_pv_info:
            raise self._error(start, f"{name} record before X86_PV_INFO", "record order")
        if rtype == R.X86_PV_P2M_FRAMES:
            if hdr.version >= 3 and not self._seen_static_data_end:
                raise self._error(start, "X86_PV_P2M_FRAMES record before STATIC_DATA_END", "record order")
            want_len(length >= 8 and length % 8 == 0, "a multiple of 8, at least 8")
            first, last = struct.unpack("<II", r.read_exact(8, "the X86_PV_P2M_FRAMES header"))
            if first > last:
                raise self._error(start + 8, f"X86_PV_P2M_FRAMES start pfn {first} > end pfn {last}", "bad record")
            fpp = PAGE_SIZE // (self.s.pv_guest_width or 8)
            frames = last // fpp + 1 - first // fpp
            want_len(length == 8 + 8 * frames, f"{8 + 8 * frames} for pfns {first}-{last}")
            r.skip(length - 8, "the X86_PV_P2M_FRAMES record body")
            return
        if rtype in _PV_VCPU:
            want_len(length >= 8, "at least 8")
            vcpu_id, res = struct.unpack("<II", r.read_exact(8, f"the {name} header"))
            if res:
                raise self._error(start + 12, f"reserved field of {name} is not zero", "reserved field")
            if rtype == R.X86_PV_VCPU_BASIC and length > 8:
                if len(self.s.vcpu_ids) < _MAX_VCPU_IDS:
                    self.s.vcpu_ids.add(vcpu_id)
                elif vcpu_id not in self.s.vcpu_ids:
                    self.s.vcpu_ids_truncated = True
            r.skip(length - 8, f"the {name} record body")
            return
        if rtype == R.SHARED_INFO:
            want_len(length == PAGE_SIZE, str(PAGE_SIZE))
            r.skip(length, "the SHARED_INFO record body")
            return
        if rtype == R.X86_TSC_INFO:
            want_len(length == 24, "24")
            mode, khz, nsec, incarnation, res = struct.unpack(
                "<IIQII", r.read_exact(24, "the X86_TSC_INFO record body")
            )
            if res:
                raise self._error(start + 28, "reserved field of X86_TSC_INFO is not zero", "reserved field")
            self.s.tsc = {"mode": mode, "khz": khz, "nsec": nsec, "incarnation": incarnation}
            return
        if rtype == R.HVM_CONTEXT:
            want_len(length > 0, "more than 0")
            self._hvm_context(length)
            return
        if rtype == R.HVM_PARAMS:
            want_len(length >= 8, "at least 8")
            count, res = struct.unpack("<II", r.read_exact(8, "the HVM_PARAMS header"))
            if res:
                raise self._error(start + 12, "reserved field of HVM_PARAMS is not zero", "reserved field")
            want_len(length == 8 + 16 * count, f"{8 + 16 * count} for {count} parameters")
            r.skip(length - 8, "the HVM_PARAMS entries")
            self.s.hvm_params = count
            return
        if rtype == R.X86_CPUID_POLICY:
            want_len(length >= 24 and length % 24 == 0, "a non-zero multiple of 24")
            r.skip(length, f"the {name} record body")
            return
        if rtype == R.X86_MSR_POLICY:
            want_len(length >= 16 and length % 16 == 0, "a non-zero multiple of 16")
            r.skip(length, f"the {name} record body")
            return
        raise AssertionError(f"unhandled libxc record type {name}")  # pragma: no cover

    def _page_data(self, start: int, length: int, hdr: LibxcHeaders) -> None:
        r = self.r
        s = self.s
        if hdr.version >= 3 and not self._seen_static_data_end:
            raise self._error(start, "PAGE_DATA record before STATIC_DATA_END", "record order")
        if length < 8:
            raise self._error(start + 4, f"PAGE_DATA record length {length} is shorter than its header", "bad length")
        count, res = struct.unpack("<II", r.read_exact(8, "the PAGE_DATA header"))
        if res:
            raise self._error(start + 12, "reserved field of PAGE_DATA is not zero", "reserved field")
        if count < 1:
            raise self._error(start + 8, "PAGE_DATA record with no pfns", "bad page count")
        if length < 8 + 8 * count:
            raise self._error(
                start + 8,
                f"PAGE_DATA count {count} does not fit in the record length {length}",
                "bad page count",
            )
        with_data = 0
        types = s.page_types
        pfns = s.pfns
        idx = 0
        while idx < count:
            n = min(count - idx, _PFN_CHUNK // 8)
            chunk_off = r.offset
            arr = array("Q")
            arr.frombytes(r.read_exact(8 * n, "the PAGE_DATA pfn array"))
            if sys.byteorder != "little":  # pragma: no cover
                arr.byteswap()
            for j, word in enumerate(arr):
                ptype = word >> PFN_TYPE_SHIFT
                if word & PFN_RESERVED_MASK or ptype not in _VALID_TYPES:
                    what = (
                        f"reserved bits set in PAGE_DATA pfn word 0x{word:016x}"
                        if word & PFN_RESERVED_MASK
                        else f"invalid page type {ptype} in PAGE_DATA pfn word 0x{word:016x}"
                    )
                    raise self._error(chunk_off + 8 * j, f"{what} (index {idx + j})", "bad pfn")
                tname = PageType(ptype).name
                types[tname] = types.get(tname, 0) + 1
                if ptype in _TYPES_WITH_DATA:
                    with_data += 1
                pfns.add(word & PFN_MASK)
            idx += n
        expect = 8 + 8 * count + PAGE_SIZE * with_data
        if length != expect:
            raise self._error(
                start + 4,
                f"PAGE_DATA record length {length}, expected {expect} "
                f"(8 + 8 x {count} pfns + {PAGE_SIZE} x {with_data} pages with data)",
                "bad page data length",
            )
        r.skip(PAGE_SIZE * with_data, "the PAGE_DATA page contents")
        s.page_records += 1
        s.pages += count
        s.pages_with_data += with_data
        self._pages_since_checkpoint += count

    def _hvm_context(self, length: int) -> None:
        """Counts the CPU save records (typecode 2) in an HVM context blob:
        ``u16 typecode, u16 instance, u32 length`` then the data.  A blob
        that does not parse leaves the vCPU count unknown (Xen checks it)."""
        r = self.r
        left = length
        cpus = set()
        ok = True
        for _ in range(_MAX_HVM_DESCRIPTORS):
            if left < 8:
                ok = left == 0
                break
            typecode, instance, dlen = struct.unpack("<HHI", r.read_exact(8, "an HVM context descriptor"))
            left -= 8
            if typecode == 0:
                break
            if dlen > left:
                ok = False
                break
            if typecode == 2:
                cpus.add(instance)
            r.skip(dlen, "HVM context data")
            left -= dlen
        else:
            ok = False
        r.skip(left, "the HVM_CONTEXT record body")
        self.s.hvm_vcpus = len(cpus) if ok else None

    # --------------------------------------------------------------- all

    def scan(self, fmt: str) -> Summary:
        """Walks a whole stream of the given format ("xl", "libxl", "libxc")."""
        s = self.s
        s.format = fmt
        if fmt == "xl":
            self.parse_xl_header()
        if fmt in ("xl", "libxl"):
            self.parse_libxl_header()
            self.read_libxl_record()  # LIBXC_CONTEXT, enforced
            self.parse_libxc_headers()
            while True:
                how = self.scan_libxc_records(eof_ok=self.libxl_phase == "libxc" and s.checkpoint_ends > 0)
                if how == "eof":
                    s.ended = "checkpoint"
                    break
                self.libxc_returned(how)
                self.read_libxl_section()
                if how == "end":
                    self.check_eof()
                    s.ended = "END"
                    break
        elif fmt == "libxc":
            self.parse_libxc_headers()
            while True:
                how = self.scan_libxc_records(eof_ok=s.checkpoints > 0)
                if how == "eof":
                    s.ended = "checkpoint"
                    break
                if how == "end":
                    self.check_eof()
                    s.ended = "END"
                    break
        else:
            raise ValueError(f"unknown stream format {fmt!r}")
        s.end_offset = self.r.offset
        return s


# --------------------------------------------------------------------------
# Entry points


_MAGICS = (
    ("xl", XL_MAGIC),
    ("libxl", struct.pack(">Q", LIBXL_IDENT)),
    ("libxc", struct.pack(">QI", LIBXC_MARKER, LIBXC_ID)),
)


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
            assert reader._file is not None
            head = reader._file.peek(32)[:32]
            fmt = detect_format(head)
            if fmt is None:
                if not head:
                    raise StreamFormatError("empty file", offset=reader.offset, reason="empty")
                raise StreamFormatError(
                    "not an xl save file, libxl or libxc migration stream (unknown magic)",
                    offset=reader.offset,
                    reason="unknown format",
                )
        return StreamParser(reader, summary).scan(fmt)
    finally:
        reader.close()


def scan_file(path: str, *, fmt: Optional[str] = None) -> Summary:
    """Opens ``path`` (``-`` for standard input) and runs :func:`scan_fd`."""
    if path == "-":
        return scan_fd(sys.stdin.fileno(), fmt=fmt, path=path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return scan_fd(fd, fmt=fmt, path=path)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Text rendering


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024  # type: ignore[assignment]
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return str(n)  # pragma: no cover


_FORMAT_NAMES = {
    "xl": "xl save file",
    "libxl": "libxl migration stream v2",
    "libxc": "libxc migration stream",
}


def format_summary(s: Summary) -> str:
    """The human-readable ``xensr inspect`` report."""
    out: List[str] = []
    add = out.append
    name = s.path or "<stream>"
    ended = "ends with END" if s.ended == "END" else "ends after a complete checkpoint (no END)"
    add(f"{name}: {_FORMAT_NAMES.get(s.format, s.format)}, {_size(s.size if s.size is not None else s.end_offset)}, valid, {ended}")
    if s.xl is not None:
        x = s.xl
        add(f"xl header (offset {x.offset}, {x.end_offset - x.offset} bytes)")
        add(f"  byte order          0x{x.byteorder:08x} (native)")
        add(f"  mandatory flags     0x{x.mandatory_flags:x} ({', '.join(x.flag_names()) or 'none'})")
        add(f"  optional flags      0x{x.optional_flags:x}")
        add(f"  optional data       {x.optional_data_len} bytes")
        if x.config is None and x.config_len:
            kind = "JSON" if x.config_is_json else "xl text"
            add(f"  configuration       {x.config_len} bytes at offset {x.config_offset}, {kind}, too large to show")
        elif x.config is None:
            add("  configuration       none")
        else:
            kind = "JSON" if x.config_is_json else "xl text"
            extra = ""
            if x.config_is_json and x.config_json is None:
                extra = ", too large to parse"
            if x.domain_name is not None:
                extra += f', domain name "{x.domain_name}"'
            add(f"  configuration       {x.config_len} bytes at offset {x.config_offset}, {kind}{extra}")
        if x.extra_optional_data:
            add(f"  extra optional data {x.extra_optional_data} bytes (ignored)")
    if s.libxl is not None:
        h = s.libxl
        legacy = ", converted from a legacy stream" if h.legacy else ""
        add(f"libxl stream v{h.version} (offset {h.offset}), options 0x{h.options:x}{legacy}")
        add(f"  records             {s.libxl_record_count}")
        for rec in s.libxl_records:
            extra = ""
            if rec.emulator_id is not None:
                emu = _EMULATOR_NAMES.get(rec.emulator_id, str(rec.emulator_id))  # type: ignore[call-overload]
                extra = f" ({emu}, index {rec.emulator_index})"
            add(f"    offset {rec.offset:<12} {rec.name:<24} {rec.length:>10} bytes{extra}")
        if len(s.libxl_records) < s.libxl_record_count:
            add(f"    ... {s.libxl_record_count - len(s.libxl_records)} more")
    if s.libxc is not None:
        h = s.libxc
        origin = "converted from a legacy stream" if h.legacy_converted else f"from Xen {h.xen_major}.{h.xen_minor}"
        add(f"libxc stream v{h.version} (offset {h.offset}, {_size(s.libxc_bytes)})")
        add(f"  domain              {h.domain_type_name}, page size {1 << h.page_shift}, {origin}")
        if s.pv_guest_width is not None:
            add(f"  PV guest            {s.pv_guest_width * 8}-bit, {s.pv_pt_levels} page-table levels")
        add(f"  {'record type':<26} {'count':>10} {'bytes':>14}")
        for tname, st in s.libxc_by_type.items():
            add(f"  {tname:<26} {st.count:>10} {st.bytes:>14}")
        if s.optional_records_skipped:
            add(f"  ({s.optional_records_skipped} optional records of unknown type skipped)")
        distinct = "?" if s.pfns.overflowed else str(s.pfns.count)
        resent = "?" if s.pfns.overflowed else str(s.pages - s.pfns.count)
        maxpfn = "-" if s.pfns.max_pfn is None else f"0x{s.pfns.max_pfn:x}"
        add(
            f"pages                 {s.pages} in {s.page_records} records, {s.pages_with_data} with data, "
            f"{distinct} distinct pfns (max {maxpfn}), {resent} sent again"
        )
        if s.page_types:
            add("  by type             " + ", ".join(f"{k} {v}" for k, v in s.page_types.items()))
        vc = s.vcpus
        add(f"vCPUs                 {'unknown' if vc is None else vc} (from {s.vcpu_source})")
        line = f"checkpoints           {s.checkpoints}"
        if s.checkpoints:
            line += f" ({s.checkpoint_ends} CHECKPOINT_END)"
            per = s.pages_per_checkpoint[:20]
            line += ", pages per checkpoint: " + " ".join(str(p) for p in per)
            if len(s.pages_per_checkpoint) > 20 or s.checkpoints > len(s.pages_per_checkpoint):
                line += " ..."
        add(line)
    return "\n".join(out) + "\n"
