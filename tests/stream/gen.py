"""A small migration-stream writer for the tests, built with struct only.

It shares no code with xensr.stream / xensr.xlfile, so that the parser is
checked against an independent rendering of the formats (docs/protocol.md §10).
test_generator.py checks the generator itself against Debian's
verify-stream-v2.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple


PAGE = 4096

# libxc record types
END, PAGE_DATA, PV_INFO, P2M_FRAMES, VCPU_BASIC, VCPU_EXTENDED, VCPU_XSAVE = 0, 1, 2, 3, 4, 5, 6
SHARED_INFO, TSC_INFO, HVM_CONTEXT, HVM_PARAMS, TOOLSTACK, VCPU_MSRS = 7, 8, 9, 10, 11, 12
VERIFY, CHECKPOINT, DIRTY_PFN_LIST, STATIC_DATA_END, CPUID_POLICY, MSR_POLICY = 13, 14, 15, 16, 17, 18

# libxl record types
L_END, L_LIBXC, L_XENSTORE, L_EMU_CONTEXT, L_CHECKPOINT_END, L_CHECKPOINT_STATE = 0, 1, 2, 3, 4, 5

XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"


def rec(rtype: int, body: bytes = b"") -> bytes:
    """u32 type, u32 length, body, zero padding to a multiple of 8."""
    return struct.pack("<II", rtype, len(body)) + body + b"\0" * ((8 - len(body) % 8) % 8)


def ihdr(version: int = 3) -> bytes:
    return struct.pack(">QIIHHI", 0xFFFFFFFFFFFFFFFF, 0x58454E46, version, 0, 0, 0)


def dhdr(dtype: int, major: int = 4, minor: int = 17) -> bytes:
    return struct.pack("<IHHII", dtype, 12, 0, major, minor)


def page_bytes(pfn: int, round_: int = 0) -> bytes:
    """Recognisable page contents."""
    return struct.pack("<QQ", pfn, round_) * (PAGE // 16)


def page_data(entries: Sequence[Tuple[int, int]], round_: int = 0) -> bytes:
    """PAGE_DATA body for (pfn, type) entries; types < 0xD carry a page."""
    body = struct.pack("<II", len(entries), 0)
    body += b"".join(struct.pack("<Q", (t << 60) | pfn) for pfn, t in entries)
    body += b"".join(page_bytes(pfn, round_) for pfn, t in entries if t < 0xD)
    return body


def hvm_context(vcpus: int) -> bytes:
    """hvm_save_descriptor {u16 typecode, u16 instance, u32 length} + data."""
    out = struct.pack("<HHI", 1, 0, 24) + b"\x11" * 24  # HEADER
    for i in range(vcpus):
        out += struct.pack("<HHI", 2, i, 1024) + bytes([i]) * 1024  # CPU
    out += struct.pack("<HHI", 4, 0, 16) + b"\x22" * 16  # PIC
    out += struct.pack("<HHI", 0, 0, 0)  # END
    return out


@dataclass
class Gen:
    """A generated stream plus what a correct parser must find in it."""

    data: bytes = b""
    #: offsets where a record or header starts (and the end), i.e. the
    #: clean cut points of the stream.
    boundaries: List[int] = field(default_factory=list)
    #: cut points at which the stream is legitimately complete (beyond END).
    valid_ends: List[int] = field(default_factory=list)
    pages: int = 0
    pages_with_data: int = 0
    distinct: set = field(default_factory=set)
    page_types: Dict[int, int] = field(default_factory=dict)
    vcpus: int = 0
    checkpoints: int = 0
    libxc_counts: Dict[int, int] = field(default_factory=dict)
    libxc_bytes: Dict[int, int] = field(default_factory=dict)
    libxl_types: List[int] = field(default_factory=list)
    libxc_offset: int = 0
    libxc_length: int = 0
    header_len: int = 0

    def add(self, chunk: bytes) -> None:
        self.boundaries.append(len(self.data))
        self.data += chunk

    def add_libxc(self, rtype: int, body: bytes = b"") -> None:
        r = rec(rtype, body)
        self.libxc_counts[rtype] = self.libxc_counts.get(rtype, 0) + 1
        self.libxc_bytes[rtype] = self.libxc_bytes.get(rtype, 0) + len(r)
        self.add(r)

    def add_pages(self, entries: Sequence[Tuple[int, int]], round_: int = 0) -> None:
        self.add_libxc(PAGE_DATA, page_data(entries, round_))
        for pfn, t in entries:
            self.pages += 1
            self.distinct.add(pfn)
            self.page_types[t] = self.page_types.get(t, 0) + 1
            if t < 0xD:
                self.pages_with_data += 1


def libxc_stream(
    g: Gen,
    *,
    hvm: bool,
    npages: int = 40,
    vcpus: int = 2,
    batch: int = 16,
    rounds: int = 2,
    checkpoints: int = 0,
    version: int = 3,
    libxl_checkpoint: Optional[Callable[[Gen], None]] = None,
    end: bool = True,
) -> None:
    """Appends a libxc stream to ``g``.

    HVM: CPUID/MSR policy, STATIC_DATA_END, PAGE_DATA rounds, then per
    checkpoint (or once) TSC_INFO, HVM_PARAMS, HVM_CONTEXT; END.
    PV: X86_PV_INFO, policies, STATIC_DATA_END, X86_PV_P2M_FRAMES,
    PAGE_DATA (with page tables and XTAB/XALLOC entries), TSC_INFO,
    SHARED_INFO, per-vCPU BASIC/EXTENDED/XSAVE/MSRS; END.
    """
    start = len(g.data)
    g.libxc_offset = start
    g.add(ihdr(version) + dhdr(2 if hvm else 1))
    g.vcpus = vcpus
    if not hvm:
        g.add_libxc(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0))
    if version >= 3:
        g.add_libxc(CPUID_POLICY, b"\x01" * 24 * 3)
        g.add_libxc(MSR_POLICY, b"\x02" * 16 * 2)
        g.add_libxc(STATIC_DATA_END)
    if not hvm:
        frames = (npages - 1) // 512 + 1
        g.add_libxc(P2M_FRAMES, struct.pack("<II", 0, npages - 1) + b"\x03" * 8 * frames)

    def memory(round_: int, pfns: Sequence[int]) -> None:
        for i in range(0, len(pfns), batch):
            chunk = pfns[i : i + batch]
            if hvm:
                entries = [(p, 0) for p in chunk]
            else:
                # a few page tables, pinned tables, and no-data entries
                types = [0, 1, 2, 3, 4, 9, 0xA, 0xB, 0xC, 0xD, 0xE, 0xF, 0, 0]
                entries = [(p, types[p % len(types)]) for p in chunk]
            g.add_pages(entries, round_)

    def tail() -> None:
        g.add_libxc(TSC_INFO, struct.pack("<IIQII", 1, 2_000_000, 123456789, 3, 0))
        if hvm:
            g.add_libxc(HVM_PARAMS, struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 1, 0xFEFFE, 2, 0xFEFFF))
            g.add_libxc(HVM_CONTEXT, hvm_context(vcpus))
        else:
            g.add_libxc(SHARED_INFO, b"\x05" * PAGE)
            for v in range(vcpus):
                g.add_libxc(VCPU_BASIC, struct.pack("<II", v, 0) + b"\x06" * 5168)
                g.add_libxc(VCPU_EXTENDED, struct.pack("<II", v, 0) + b"\x07" * 24)
                g.add_libxc(VCPU_XSAVE, struct.pack("<II", v, 0) + b"\x08" * 1000)
                g.add_libxc(VCPU_MSRS, struct.pack("<II", v, 0) + b"\x09" * 32)

    all_pfns = list(range(npages))
    memory(0, all_pfns)
    for r in range(1, rounds):
        memory(r, all_pfns[r::3])  # pages dirtied again
    if checkpoints:
        for c in range(checkpoints):
            if c:
                memory(10 + c, all_pfns[c::5])
            tail()
            g.add_libxc(CHECKPOINT)
            g.checkpoints += 1
            if libxl_checkpoint is not None:
                libxl_checkpoint(g)
        if end:
            g.add_libxc(END)
    else:
        tail()
        if end:
            g.add_libxc(END)
    g.libxc_length = len(g.data) - start


def xl_header(config: Optional[bytes] = b'{"c_info": {"name": "guest"}}\0', json: bool = True) -> bytes:
    cfg = config or b""
    flags = 2 | (1 if (json and cfg) else 0)
    opt = struct.pack("=I", len(cfg)) + cfg
    return XL_MAGIC + struct.pack("=IIII", 0x01020304, flags, 0, len(opt)) + opt


def libxl_header() -> bytes:
    return struct.pack(">QII", 0x4C6962786C466D74, 2, 0)


def emu(rtype: int, data: bytes, emu_id: int = 2, index: int = 0) -> bytes:
    return rec(rtype, struct.pack("<II", emu_id, index) + data)


def make(
    fmt: str = "xl",
    *,
    hvm: bool = True,
    checkpoints: int = 0,
    config: Optional[bytes] = b'{"c_info": {"name": "guest"}}\0',
    emulator: bool = True,
    xenstore: bool = False,
    **kw,
) -> Gen:
    """A whole stream: "xl" file, bare "libxl" stream or bare "libxc" stream."""
    g = Gen()
    if fmt == "xl":
        g.add(xl_header(config))
    if fmt in ("xl", "libxl"):
        g.add(libxl_header())
        g.libxl_types.append(L_LIBXC)
        g.add(rec(L_LIBXC))
        g.header_len = len(g.data)

        def emu_records(gg: Gen) -> None:
            if hvm and xenstore:
                gg.libxl_types.append(L_XENSTORE)
                gg.add(emu(L_XENSTORE, b"physmap/1/start_addr\0f0000000\0physmap/1/size\0800000\0"))
            if hvm and emulator:
                gg.libxl_types.append(L_EMU_CONTEXT)
                gg.add(emu(L_EMU_CONTEXT, b"QEVM" + b"\x42" * 1001))

        def at_checkpoint(gg: Gen) -> None:
            emu_records(gg)
            gg.libxl_types.append(L_CHECKPOINT_END)
            gg.add(rec(L_CHECKPOINT_END))
            gg.valid_ends.append(len(gg.data))

        libxc_stream(g, hvm=hvm, checkpoints=checkpoints, libxl_checkpoint=at_checkpoint, end=not checkpoints, **kw)
        if not checkpoints:
            emu_records(g)
            g.libxl_types.append(L_END)
            g.add(rec(L_END))
            g.valid_ends.append(len(g.data))
    else:
        g.header_len = 0

        def bare_checkpoint(gg: Gen) -> None:
            gg.valid_ends.append(len(gg.data))

        libxc_stream(g, hvm=hvm, checkpoints=checkpoints, libxl_checkpoint=bare_checkpoint, end=not checkpoints, **kw)
        if not checkpoints:
            g.valid_ends.append(len(g.data))
    g.boundaries.append(len(g.data))
    return g


if __name__ == "__main__":  # pragma: no cover - handy for poking at files
    sys.stdout.buffer.write(make(sys.argv[1] if len(sys.argv) > 1 else "xl").data)
