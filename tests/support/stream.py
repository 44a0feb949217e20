"""A strict reader of libxc migration streams (v2/v3) for the tests.

Independent of xensr's own stream code: the simulated host's tests check the records
it writes with this, and it knows the layouts it promises
(start_info, HVM context, HVM params).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

PAGE_SIZE = 4096
REC_LENGTH_MAX = 128 << 20

REC = {
    0x00: "END", 0x01: "PAGE_DATA", 0x02: "X86_PV_INFO", 0x03: "X86_PV_P2M_FRAMES",
    0x04: "X86_PV_VCPU_BASIC", 0x05: "X86_PV_VCPU_EXTENDED", 0x06: "X86_PV_VCPU_XSAVE",
    0x07: "SHARED_INFO", 0x08: "X86_TSC_INFO", 0x09: "HVM_CONTEXT", 0x0A: "HVM_PARAMS",
    0x0B: "TOOLSTACK", 0x0C: "X86_PV_VCPU_MSRS", 0x0D: "VERIFY", 0x0E: "CHECKPOINT",
    0x0F: "CHECKPOINT_DIRTY_PFN_LIST", 0x10: "STATIC_DATA_END",
    0x11: "X86_CPUID_POLICY", 0x12: "X86_MSR_POLICY",
}
TYPE = {v: k for k, v in REC.items()}

VCPU_X86_64_SIZE = 5168            # sizeof(vcpu_guest_context_x86_64_t)
HVM_HW_CPU_SIZE = 1032             # sizeof(struct hvm_hw_cpu)
HVM_FILE_MAGIC = 0x54381286
HVM_PARAM_STORE_PFN = 1
HVM_PARAM_CONSOLE_PFN = 17


class StreamError(ValueError):
    def __init__(self, message: str, offset: int):
        super().__init__(f"offset {offset}: {message}")
        self.offset = offset


@dataclass
class Record:
    type: int
    body: bytes
    offset: int

    @property
    def name(self) -> str:
        return REC.get(self.type, f"0x{self.type:x}")

    @property
    def length(self) -> int:
        return len(self.body)


@dataclass
class Stream:
    version: int
    guest_type: int                 # 1 PV, 2 HVM
    xen: Tuple[int, int]
    records: List[Record] = field(default_factory=list)
    trailing: bytes = b""           # bytes after END (should be none)

    @property
    def names(self) -> List[str]:
        return [r.name for r in self.records]

    def squashed(self) -> List[str]:
        """Record names with runs of PAGE_DATA squashed to one."""
        out: List[str] = []
        for n in self.names:
            if n == "PAGE_DATA" and out and out[-1] == "PAGE_DATA":
                continue
            out.append(n)
        return out

    def of(self, name: str) -> List[Record]:
        return [r for r in self.records if r.name == name]

    def page_batches(self) -> List[List[int]]:
        """pfns of each PAGE_DATA record."""
        out = []
        for r in self.of("PAGE_DATA"):
            count, _ = struct.unpack_from("<II", r.body, 0)
            words = struct.unpack_from(f"<{count}Q", r.body, 8)
            out.append([w & ((1 << 52) - 1) for w in words])
        return out

    def final_memory(self, upto: Optional[int] = None) -> Dict[int, bytes]:
        """pfn -> page contents after applying PAGE_DATA records in order
        (the first ``upto`` records if given)."""
        pages: Dict[int, bytes] = {}
        for r in self.records[:upto]:
            if r.name != "PAGE_DATA":
                continue
            count, _ = struct.unpack_from("<II", r.body, 0)
            words = struct.unpack_from(f"<{count}Q", r.body, 8)
            data = 8 + 8 * count
            for w in words:
                if (w >> 60) in (0xD, 0xE, 0xF):
                    continue
                pages[w & ((1 << 52) - 1)] = r.body[data:data + PAGE_SIZE]
                data += PAGE_SIZE
        return pages


def parse(data: bytes, *, allow_eof_without_end: bool = False) -> Stream:
    """Parse and check framing; raise StreamError with the offset."""
    if len(data) < 40:
        raise StreamError("shorter than the two headers", 0)
    marker, ident, version, options, res1, res2 = struct.unpack_from(">QIIHHI", data, 0)
    if marker != 0xFFFFFFFFFFFFFFFF:
        raise StreamError(f"bad marker {marker:#x}", 0)
    if ident != 0x58454E46:
        raise StreamError(f"bad id {ident:#x}", 8)
    if version not in (2, 3):
        raise StreamError(f"bad version {version}", 12)
    if options or res1 or res2:
        raise StreamError("options/reserved set in image header", 16)
    gtype, page_shift, dres, major, minor = struct.unpack_from("<IHHII", data, 24)
    if gtype not in (1, 2) or page_shift != 12 or dres:
        raise StreamError("bad domain header", 24)
    s = Stream(version, gtype, (major, minor))
    pos = 40
    while True:
        if pos == len(data) and allow_eof_without_end:
            return s
        if len(data) - pos < 8:
            raise StreamError("truncated record header", pos)
        rtype, length = struct.unpack_from("<II", data, pos)
        if length > REC_LENGTH_MAX:
            raise StreamError(f"record length {length:#x} too large", pos)
        padded = (length + 7) & ~7
        if len(data) - pos - 8 < padded:
            raise StreamError(f"truncated record {REC.get(rtype, rtype)}", pos)
        body = data[pos + 8:pos + 8 + length]
        pad = data[pos + 8 + length:pos + 8 + padded]
        if pad.strip(b"\0"):
            raise StreamError("non-zero padding", pos + 8 + length)
        s.records.append(Record(rtype, bytes(body), pos))
        pos += 8 + padded
        if rtype == 0:
            s.trailing = bytes(data[pos:])
            return s


def check_page_data(r: Record) -> List[int]:
    """Check one PAGE_DATA record's layout; return its pfns."""
    count, res = struct.unpack_from("<II", r.body, 0)
    assert res == 0 and 1 <= count <= 1024, (count, res)
    words = struct.unpack_from(f"<{count}Q", r.body, 8)
    with_data = sum(1 for w in words if (w >> 60) not in (0xD, 0xE, 0xF))
    assert len(r.body) == 8 + 8 * count + PAGE_SIZE * with_data
    return [w & ((1 << 52) - 1) for w in words]


def start_info_fields(page: bytes) -> Tuple[bytes, int, int]:
    """(magic, store_mfn, console mfn) of a struct start_info (x86_64)."""
    magic = page[:32].rstrip(b"\0")
    (store,) = struct.unpack_from("<Q", page, 56)
    (console,) = struct.unpack_from("<Q", page, 72)
    return magic, store, console


def hvm_params(r: Record) -> Dict[int, int]:
    count, res = struct.unpack_from("<II", r.body, 0)
    assert res == 0 and len(r.body) == 8 + 16 * count
    return dict(struct.unpack_from("<QQ", r.body, 8 + 16 * i) for i in range(count))


def hvm_context_cpus(r: Record) -> int:
    """Check the HVM context layout (HEADER, CPU..., END); return #CPUs."""
    body, pos, cpus, first = r.body, 0, 0, True
    while True:
        code, inst, length = struct.unpack_from("<HHI", body, pos)
        pos += 8
        if first:
            assert code == 1 and length == 24
            (magic,) = struct.unpack_from("<I", body, pos)
            assert magic == HVM_FILE_MAGIC
            first = False
        elif code == 2:
            assert length == HVM_HW_CPU_SIZE and inst == cpus
            cpus += 1
        elif code == 0:
            assert length == 0 and pos == len(body)
            return cpus
        pos += length
