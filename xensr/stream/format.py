"""The stream formats' facts: magics, numbers, layouts, names, and what each
record type must look like (docs/protocol.md §10).

Nothing here reads a stream; the parsers look everything up here, so a fact
about the formats is written once.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import FrozenSet, Mapping, Optional

# --------------------------------------------------------------------------
# The xl save-file header

#: xl save-file magic: exactly 32 bytes, no terminating NUL of its own.
XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
assert len(XL_MAGIC) == 32
XL_BYTEORDER = 0x01020304
#: XL_BYTEORDER as a host of the other endianness writes it.
XL_BYTEORDER_SWAPPED = 0x04030201
XL_FLAG_JSON = 1 << 0
XL_FLAG_STREAMV2 = 1 << 1
XL_FLAGS_KNOWN = XL_FLAG_JSON | XL_FLAG_STREAMV2
#: struct save_file_header: magic, byteorder, mandatory_flags,
#: optional_flags, optional_data_len (native order).
XL_HEADER = struct.Struct("=32sIIII")
#: Offsets of its fields after the magic (where errors point).
XL_OFF_BYTEORDER = 32
XL_OFF_MANDATORY_FLAGS = 36
XL_OFF_OPTIONAL_DATA_LEN = 44
#: The optional data starts with the configuration's length (xl reads
#: only that and the configuration; the rest is ignored).
XL_CONFIG_LEN = struct.Struct("=I")

# --------------------------------------------------------------------------
# The libxl migration stream v2 header

LIBXL_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_VERSION = 2
LIBXL_OPT_BIG_ENDIAN = 1 << 0
LIBXL_OPT_LEGACY = 1 << 1
LIBXL_OPTS_KNOWN = LIBXL_OPT_BIG_ENDIAN | LIBXL_OPT_LEGACY
#: ident, version, options (big-endian).
LIBXL_HEADER = struct.Struct(">QII")
LIBXL_OFF_VERSION = 8
LIBXL_OFF_OPTIONS = 12

# --------------------------------------------------------------------------
# The libxc migration stream v2/v3 headers

LIBXC_MARKER = 0xFFFFFFFFFFFFFFFF
LIBXC_ID = 0x58454E46  # "XENF"
LIBXC_VERSIONS = (2, 3)
#: The first version with STATIC_DATA_END and the CPU policy records.
LIBXC_V3 = 3
LIBXC_OPT_BIG_ENDIAN = 1 << 0
#: Image header: marker, id, version, options, two reserved fields
#: (big-endian).
LIBXC_IHDR = struct.Struct(">QIIHHI")
LIBXC_IHDR_OFF_ID = 8
LIBXC_IHDR_OFF_VERSION = 12
LIBXC_IHDR_OFF_OPTIONS = 16
LIBXC_IHDR_OFF_RESERVED = (18, 20)
#: Domain header: type, page shift, reserved, Xen major, Xen minor.
LIBXC_DHDR = struct.Struct("<IHHII")
LIBXC_DHDR_OFF_PAGE_SHIFT = 4
LIBXC_DHDR_OFF_RESERVED = 6

# --------------------------------------------------------------------------
# Records (both layers)

#: Record header of both layers: u32 type, u32 body length (little-endian;
#: big-endian streams are rejected by both readers).
RECORD_HEADER = struct.Struct("<II")
#: Where the length field sits in a record header.
RECORD_OFF_LENGTH = 4
#: libxl emulator records start with u32 emulator id, u32 index.
EMULATOR_HEADER = struct.Struct("<II")
#: Largest libxc record body xc_domain_restore accepts.
REC_LENGTH_MAX = 128 << 20
REC_ALIGN = 8
REC_TYPE_OPTIONAL = 0x80000000
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

#: A PAGE_DATA pfn word: pfn in bits 0-51, reserved bits 52-59, page type
#: in bits 60-63.
PFN_MASK = (1 << 52) - 1
PFN_RESERVED_MASK = ((1 << 60) - 1) & ~PFN_MASK
PFN_TYPE_SHIFT = 60
PFN_WORD_SIZE = 8

# Bodies of libxc records (little-endian).
#: PAGE_DATA: u32 count, u32 reserved, then count pfn words, then pages.
PAGE_DATA_HEADER = struct.Struct("<II")
PAGE_DATA_OFF_RESERVED = 4
#: X86_PV_INFO: u8 guest width, u8 page-table levels, u16 + u32 reserved.
X86_PV_INFO = struct.Struct("<BBHI")
X86_PV_INFO_OFF_LEVELS = 1
#: Guest widths (bytes) and page-table levels a PV guest may have.
X86_PV_GUEST_WIDTHS = (4, 8)
X86_PV_PT_LEVELS = (3, 4)
X86_PV_INFO_OFF_RESERVED = 2
#: X86_PV_P2M_FRAMES: u32 start pfn, u32 end pfn, then one u64 frame for
#: each p2m page covering them.
X86_PV_P2M_FRAMES_HEADER = struct.Struct("<II")
P2M_FRAME_SIZE = 8
#: X86_PV_VCPU_*: u32 vcpu id, u32 reserved, then the context.
X86_PV_VCPU_HEADER = struct.Struct("<II")
X86_PV_VCPU_OFF_RESERVED = 4
#: X86_TSC_INFO: u32 mode, u32 kHz, u64 nsec, u32 incarnation, u32 reserved.
X86_TSC_INFO = struct.Struct("<IIQII")
X86_TSC_INFO_OFF_RESERVED = 20
#: HVM_PARAMS: u32 count, u32 reserved, then count (u64 index, u64 value).
HVM_PARAMS_HEADER = struct.Struct("<II")
HVM_PARAMS_OFF_RESERVED = 4
HVM_PARAMS_ENTRY = struct.Struct("<QQ")
#: HVM_CONTEXT: hvm_save_descriptor (u16 typecode, u16 instance, u32
#: length) then the data, until typecode END.
HVM_SAVE_DESCRIPTOR = struct.Struct("<HHI")
HVM_SAVE_END = 0
HVM_SAVE_CPU = 2
#: X86_CPUID_POLICY / X86_MSR_POLICY: arrays of these entries.
CPUID_LEAF_SIZE = 24
MSR_ENTRY_SIZE = 16


def pad_length(length: int) -> int:
    """Zero bytes that follow a record body of ``length`` bytes."""
    return -length % REC_ALIGN


def record_wire_size(length: int) -> int:
    """Bytes a record with a body of ``length`` takes in the stream."""
    return RECORD_HEADER.size + length + pad_length(length)


# --------------------------------------------------------------------------
# Numbers and their names


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
VALID_PAGE_TYPES: FrozenSet[int] = frozenset(int(t) for t in PageType)
PAGE_TYPES_WITH_DATA: FrozenSet[int] = frozenset(t for t in VALID_PAGE_TYPES if t < PageType.BROKEN)
#: Page type number -> name, for counting without building enum members.
PAGE_TYPE_NAMES: Mapping[int, str] = {int(t): t.name for t in PageType}

DOMAIN_NAMES: Mapping[int, str] = {DomainType.X86_PV: "x86 PV", DomainType.X86_HVM: "x86 HVM"}
EMULATOR_NAMES: Mapping[int, str] = {
    EmulatorId.UNKNOWN: "unknown",
    EmulatorId.QEMU_TRADITIONAL: "qemu-traditional",
    EmulatorId.QEMU_UPSTREAM: "qemu-upstream",
}


#: Record type number -> name (a dict: parsers look a name up per record).
_LIBXL_NAMES: Mapping[int, str] = {int(t): t.name for t in LibxlRecordType}
_LIBXC_NAMES: Mapping[int, str] = {int(t): t.name for t in LibxcRecordType}


def libxl_record_name(rtype: int) -> str:
    name = _LIBXL_NAMES.get(rtype)
    return name if name is not None else f"0x{rtype:08x}"


def libxc_record_name(rtype: int) -> str:
    name = _LIBXC_NAMES.get(rtype)
    return name if name is not None else f"0x{rtype:08x}"


# --------------------------------------------------------------------------
# What each record type must look like


@dataclass(frozen=True)
class BodyLength:
    """The body lengths a record type allows, and how an error says so."""

    #: The words after "expected" in the error message.
    expect: str
    exact: Optional[int] = None
    minimum: int = 0
    multiple: int = 1

    def ok(self, length: int) -> bool:
        if self.exact is not None:
            return length == self.exact
        return length >= self.minimum and length % self.multiple == 0


def _exactly(n: int) -> BodyLength:
    return BodyLength(str(n), exact=n)


def _at_least(n: int) -> BodyLength:
    return BodyLength(f"at least {n}", minimum=n)


def _entries_of(size: int) -> BodyLength:
    return BodyLength(f"a non-zero multiple of {size}", minimum=size, multiple=size)


@dataclass(frozen=True)
class LibxcRecordRule:
    """Where a libxc record may appear and how long its body may be.

    The parser checks these in field order, then hands the body to the
    record type's handler, which checks what depends on the contents.
    """

    #: None when the handler checks the length itself (PAGE_DATA).
    length: Optional[BodyLength]
    #: Valid only in a stream of this domain type.
    domain: Optional[DomainType] = None
    #: First libxc stream version that may carry it.
    since: int = 2
    #: Must follow X86_PV_INFO.
    after_pv_info: bool = False
    #: In a v3 stream, must follow STATIC_DATA_END.
    after_static_data_end: bool = False
    #: Why the main stream never carries it ("" when it may).
    refused: str = ""


_R = LibxcRecordType
_PV = DomainType.X86_PV
_HVM = DomainType.X86_HVM
_PV_VCPU_RULE = LibxcRecordRule(_at_least(X86_PV_VCPU_HEADER.size), domain=_PV, after_pv_info=True)

#: Every known libxc record type and its rule (Xen 4.17's to 4.21's restore and
#: verify-stream-v2, whichever is stricter).
LIBXC_RECORDS: Mapping[int, LibxcRecordRule] = {
    _R.END: LibxcRecordRule(_exactly(0)),
    _R.PAGE_DATA: LibxcRecordRule(None, after_static_data_end=True),
    _R.X86_PV_INFO: LibxcRecordRule(_exactly(X86_PV_INFO.size), domain=_PV),
    _R.X86_PV_P2M_FRAMES: LibxcRecordRule(
        BodyLength(
            f"a multiple of {P2M_FRAME_SIZE}, at least {X86_PV_P2M_FRAMES_HEADER.size}",
            minimum=X86_PV_P2M_FRAMES_HEADER.size,
            multiple=P2M_FRAME_SIZE,
        ),
        domain=_PV,
        after_pv_info=True,
        after_static_data_end=True,
    ),
    _R.X86_PV_VCPU_BASIC: _PV_VCPU_RULE,
    _R.X86_PV_VCPU_EXTENDED: _PV_VCPU_RULE,
    _R.X86_PV_VCPU_XSAVE: _PV_VCPU_RULE,
    _R.SHARED_INFO: LibxcRecordRule(_exactly(PAGE_SIZE), domain=_PV, after_pv_info=True),
    _R.X86_TSC_INFO: LibxcRecordRule(_exactly(X86_TSC_INFO.size)),
    _R.HVM_CONTEXT: LibxcRecordRule(BodyLength("more than 0", minimum=1), domain=_HVM),
    _R.HVM_PARAMS: LibxcRecordRule(_at_least(HVM_PARAMS_HEADER.size), domain=_HVM),
    _R.TOOLSTACK: LibxcRecordRule(None, refused="deprecated TOOLSTACK record (Xen 4.17 to 4.21 do not accept it)"),
    _R.X86_PV_VCPU_MSRS: _PV_VCPU_RULE,
    _R.VERIFY: LibxcRecordRule(_exactly(0)),
    _R.CHECKPOINT: LibxcRecordRule(_exactly(0)),
    _R.CHECKPOINT_DIRTY_PFN_LIST: LibxcRecordRule(
        None,
        refused="CHECKPOINT_DIRTY_PFN_LIST record in the main stream (it belongs on the COLO back channel)",
    ),
    _R.STATIC_DATA_END: LibxcRecordRule(_exactly(0), since=LIBXC_V3),
    _R.X86_CPUID_POLICY: LibxcRecordRule(_entries_of(CPUID_LEAF_SIZE), since=LIBXC_V3),
    _R.X86_MSR_POLICY: LibxcRecordRule(_entries_of(MSR_ENTRY_SIZE), since=LIBXC_V3),
}

_L = LibxlRecordType
#: libxl record types with an empty body.
LIBXL_EMPTY_RECORDS: FrozenSet[int] = frozenset({_L.END, _L.LIBXC_CONTEXT, _L.CHECKPOINT_END})
#: libxl record types whose body starts with EMULATOR_HEADER.
LIBXL_EMULATOR_RECORDS: FrozenSet[int] = frozenset({_L.EMULATOR_XENSTORE_DATA, _L.EMULATOR_CONTEXT})
#: libxl record types that are known but never in the main stream, and why.
LIBXL_REFUSED_RECORDS: Mapping[int, str] = {
    _L.CHECKPOINT_STATE: "CHECKPOINT_STATE record in the main stream (it belongs on the COLO back channel)",
}
#: libxl record types that end a section: the stream (END) or a checkpoint.
LIBXL_SECTION_ENDS: FrozenSet[int] = frozenset({_L.END, _L.CHECKPOINT_END})
