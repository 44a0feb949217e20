"""xensr.stream: the streaming parser/validator, against generated streams."""

from __future__ import annotations

import os
import struct
import threading

import pytest

from tests.stream.gen import (
    CHECKPOINT,
    CPUID_POLICY,
    DIRTY_PFN_LIST,
    END,
    HVM_CONTEXT,
    HVM_PARAMS,
    L_CHECKPOINT_END,
    L_CHECKPOINT_STATE,
    L_EMU_CONTEXT,
    L_END,
    L_LIBXC,
    L_XENSTORE,
    MSR_POLICY,
    P2M_FRAMES,
    PAGE,
    PAGE_DATA,
    PV_INFO,
    SHARED_INFO,
    STATIC_DATA_END,
    TOOLSTACK,
    TSC_INFO,
    VCPU_BASIC,
    XL_MAGIC,
    dhdr,
    emu,
    hvm_context,
    ihdr,
    libxl_header,
    make,
    page_data,
    rec,
    xl_header,
)
from xensr import stream
from xensr.stream import xl as stream_xl
from xensr.errors import StreamFormatError

PTYPE_NAMES = {
    0: "NOTAB", 1: "L1TAB", 2: "L2TAB", 3: "L3TAB", 4: "L4TAB",
    9: "L1TAB_PINNED", 0xA: "L2TAB_PINNED", 0xB: "L3TAB_PINNED", 0xC: "L4TAB_PINNED",
    0xD: "BROKEN", 0xE: "XALLOC", 0xF: "XTAB",
}
LIBXC_NAMES = {t.value: t.name for t in stream.LibxcRecordType}
LIBXL_NAMES = {t.value: t.name for t in stream.LibxlRecordType}


def scan(tmp_path, data: bytes, fmt=None) -> stream.Summary:
    p = tmp_path / "stream"
    p.write_bytes(data)
    return stream.scan_file(str(p), fmt=fmt)


def scan_error(tmp_path, data: bytes, fmt=None) -> StreamFormatError:
    with pytest.raises(StreamFormatError) as ei:
        scan(tmp_path, data, fmt)
    e = ei.value
    assert "\n" not in str(e)
    assert str(e).startswith(f"offset {e.offset}: ")
    return e


CASES = [
    (fmt, hvm, cps)
    for fmt in ("xl", "libxl", "libxc")
    for hvm in (True, False)
    for cps in (0, 3)
]


def case_id(c):
    fmt, hvm, cps = c
    return f"{fmt}-{'hvm' if hvm else 'pv'}" + (f"-{cps}cp" if cps else "")


# --------------------------------------------------------------------------
# What a scan finds


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_summary_matches_generated_stream(tmp_path, case):
    fmt, hvm, cps = case
    g = make(fmt, hvm=hvm, checkpoints=cps, xenstore=True)
    s = scan(tmp_path, g.data)
    assert s.format == fmt
    assert s.size == len(g.data) == s.end_offset
    assert s.ended == ("checkpoint" if cps else "END")
    assert s.libxc.domain_type == (2 if hvm else 1)
    assert (s.libxc.version, s.libxc.page_shift, s.libxc.xen_major, s.libxc.xen_minor) == (3, 12, 4, 17)
    assert s.libxc_offset == g.libxc_offset
    assert s.pages == g.pages
    assert s.pages_with_data == g.pages_with_data
    assert s.pfns.count == len(g.distinct)
    assert s.pfns.max_pfn == max(g.distinct)
    assert s.page_types == {PTYPE_NAMES[t]: n for t, n in g.page_types.items()}
    assert s.vcpus == g.vcpus
    assert s.checkpoints == g.checkpoints == cps
    assert {k: (v.count, v.bytes) for k, v in s.libxc_by_type.items()} == {
        LIBXC_NAMES[t]: (g.libxc_counts[t], g.libxc_bytes[t]) for t in g.libxc_counts
    }
    assert sum(v.bytes for v in s.libxc_by_type.values()) + 40 == s.libxc_bytes
    if fmt == "libxc":
        assert s.libxl is None and s.xl is None
        assert s.libxc_bytes == len(g.data)
    else:
        assert [r.type for r in s.libxl_records] == g.libxl_types
        assert s.checkpoint_ends == cps
        if cps:
            assert len(s.pages_per_checkpoint) == cps
            assert sum(s.pages_per_checkpoint) == s.pages
    if fmt == "xl":
        assert s.xl.config == b'{"c_info": {"name": "guest"}}\0'
        assert s.xl.domain_name == "guest"
        assert s.xl.mandatory_flags == 3
    if not hvm:
        assert (s.pv_guest_width, s.pv_pt_levels) == (8, 4)
        assert s.vcpu_ids == set(range(g.vcpus))
    # the JSON document carries the same numbers
    doc = s.to_dict()
    assert doc["valid"] is True
    assert doc["pages"]["total"] == g.pages
    assert doc["pages"]["distinct_pfns"] == len(g.distinct)
    assert doc["vcpus"]["count"] == g.vcpus
    assert doc["checkpoints"]["count"] == cps


def test_pages_sent_again_are_counted_once_as_distinct(tmp_path):
    g = make("libxc", hvm=True, npages=64, rounds=4, batch=7)
    s = scan(tmp_path, g.data)
    assert s.pages > 64
    assert s.pfns.count == 64
    assert s.to_dict()["pages"]["resent"] == s.pages - 64


def test_hvm_vcpus_come_from_the_hvm_context(tmp_path):
    g = make("libxc", hvm=True, vcpus=7)
    assert scan(tmp_path, g.data).vcpus == 7


def test_unparsable_hvm_context_leaves_vcpus_unknown(tmp_path):
    body = ihdr() + dhdr(2) + rec(STATIC_DATA_END) + rec(PAGE_DATA, page_data([(0, 0)]))
    body += rec(HVM_CONTEXT, struct.pack("<HHI", 1, 0, 4096) + b"x" * 16)  # length past the end
    body += rec(END)
    s = scan(tmp_path, body)
    assert s.vcpus is None
    assert s.to_dict()["vcpus"]["count"] is None


def test_scan_from_a_pipe(tmp_path):
    g = make("xl", hvm=False, checkpoints=2)
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as f:
            f.write(g.data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        s = stream.scan_fd(r)
    finally:
        t.join()
        os.close(r)
    assert s.size is None
    assert s.end_offset == len(g.data)
    assert s.pages == g.pages and s.checkpoints == 2


def test_detect_format():
    assert stream.detect_format(XL_MAGIC) == "xl"
    assert stream.detect_format(libxl_header()) == "libxl"
    assert stream.detect_format(ihdr()) == "libxc"
    assert stream.detect_format(b"Xen s") == "xl"
    assert stream.detect_format(b"\x7fELF") is None
    assert stream.detect_format(b"") is None


# --------------------------------------------------------------------------
# Truncation


def cut_points(g):
    """Every record boundary, and points inside each record and header."""
    points = set()
    b = g.boundaries
    for i, start in enumerate(b):
        points.add(start)
        if i + 1 < len(b):
            nxt = b[i + 1]
            for d in (1, 4, 7, 8, 9, 12, 15, 16, 17, 24, 33):
                if start + d < nxt:
                    points.add(start + d)
            points.add((start + nxt) // 2)
            points.add(nxt - 1)
    return sorted(points)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_truncated_anywhere_reports_the_end_of_file_offset(tmp_path, case):
    fmt, hvm, cps = case
    g = make(fmt, hvm=hvm, checkpoints=cps, xenstore=True)
    p = tmp_path / "cut"
    checked = 0
    for cut in cut_points(g):
        if cut == len(g.data):
            continue
        p.write_bytes(g.data[:cut])
        if cut in g.valid_ends:
            # a checkpointed stream may stop after any complete checkpoint
            s = stream.scan_file(str(p))
            assert s.ended == "checkpoint"
            continue
        with pytest.raises(StreamFormatError) as ei:
            stream.scan_file(str(p))
        e = ei.value
        assert e.offset == cut, (cut, str(e))
        if cut == 0:
            assert "empty" in str(e)
        else:
            assert e.reason == "truncated", str(e)
            assert "end of file" in str(e)
        checked += 1
    assert checked > 3 * len(g.boundaries)


def test_truncation_messages_name_what_is_missing(tmp_path):
    g = make("xl", hvm=True)
    # right after the libxc END: the libxl END is missing
    libxc_end = g.libxc_offset + g.libxc_length
    e = scan_error(tmp_path, g.data[:libxc_end])
    assert e.offset == libxc_end
    assert "no END record" in str(e) and "libxl" in str(e)
    # inside the libxc stream at a record boundary: libxc END missing
    e = scan_error(tmp_path, g.data[: g.libxc_offset + 40])
    assert "libxc" in str(e) and "no END record" in str(e)


# --------------------------------------------------------------------------
# Flipped header bytes


def header_fields(fmt: str, config_len: int):
    """(start, end, expected error offset or a rule) for each header byte.

    A rule "exact" means the first differing byte itself; None means the
    field is legitimately free (optional flags, Xen version); "any" means an
    error must occur somewhere after the field (lengths)."""
    fields = []
    base = 0
    if fmt == "xl":
        fields += [
            (0, 32, "exact"),  # magic
            (32, 36, 32),  # byteorder
            (36, 40, 36),  # mandatory flags
            (40, 44, None),  # optional flags: xl ignores them
            (44, 48, "any"),  # optional data length
            (48, 52, "any"),  # configuration length
        ]
        base = 52 + config_len
    if fmt in ("xl", "libxl"):
        fields += [
            (base, base + 8, "exact"),  # ident
            (base + 8, base + 12, base + 8),  # version
            (base + 12, base + 16, base + 12),  # options
            (base + 16, base + 20, base + 16),  # LIBXC_CONTEXT type
            (base + 20, base + 24, base + 20),  # LIBXC_CONTEXT length
        ]
        base += 24
    fields += [
        (base, base + 12, "exact"),  # marker, "XENF"
        (base + 12, base + 16, base + 12),  # version
        (base + 16, base + 18, base + 16),  # options
        (base + 18, base + 20, base + 18),  # reserved
        (base + 20, base + 24, base + 20),  # reserved
        (base + 24, base + 28, base + 24),  # domain type
        (base + 28, base + 30, base + 28),  # page shift
        (base + 30, base + 32, base + 30),  # reserved
        (base + 32, base + 40, None),  # xen major, minor
    ]
    return fields


@pytest.mark.parametrize("fmt", ["xl", "libxl", "libxc"])
def test_each_flipped_header_byte_is_reported_at_its_field(tmp_path, fmt):
    g = make(fmt, hvm=True)
    cfg_len = len(b'{"c_info": {"name": "guest"}}\0')
    fields = header_fields(fmt, cfg_len)
    rejected = 0
    for start, end, expect in fields:
        for i in range(start, end):
            data = bytearray(g.data)
            data[i] ^= 0xFF
            if expect is None:
                s = scan(tmp_path, bytes(data))
                assert s.pages == g.pages
                continue
            e = scan_error(tmp_path, bytes(data))
            if expect == "exact":
                assert e.offset == i, (i, str(e))
            elif expect == "any":
                assert start <= e.offset <= len(g.data), (i, str(e))
            else:
                assert e.offset == expect, (i, str(e))
            rejected += 1
    assert rejected == sum(end - start for start, end, expect in fields if expect is not None)


def test_flipped_optional_flags_are_reported_not_rejected(tmp_path):
    data = bytearray(make("xl").data)
    struct.pack_into("=I", data, 40, 0x80)
    s = scan(tmp_path, bytes(data))
    assert s.xl.optional_flags == 0x80
    assert s.to_dict()["xl_header"]["optional_flags"] == 0x80


# --------------------------------------------------------------------------
# xl header rules


def xl_file(header: bytes, hvm=True) -> bytes:
    g = make("libxl", hvm=hvm)
    return header + g.data


def test_xl_without_configuration(tmp_path):
    hdr = xl_header(None)
    assert len(hdr) == 52 and struct.unpack_from("=IIII", hdr, 32) == (0x01020304, 2, 0, 4)
    s = scan(tmp_path, xl_file(hdr))
    assert s.xl.config is None and s.xl.config_len == 0
    assert s.xl.mandatory_flags == 2
    assert s.to_dict()["xl_header"]["config_format"] is None


def test_xl_text_configuration_is_not_parsed_as_json(tmp_path):
    cfg = b'name = "guest"\nmemory = 512\n'
    s = scan(tmp_path, xl_file(xl_header(cfg, json=False)))
    assert s.xl.config == cfg
    assert not s.xl.config_is_json
    assert s.xl.config_json is None


def test_xl_extra_optional_data_is_skipped(tmp_path):
    cfg = b'{"a": 1}\0'
    opt = struct.pack("=I", len(cfg)) + cfg + b"future!"
    hdr = XL_MAGIC + struct.pack("=IIII", 0x01020304, 3, 0, len(opt)) + opt
    s = scan(tmp_path, xl_file(hdr))
    assert s.xl.extra_optional_data == 7
    assert s.xl.config_json == {"a": 1}
    assert s.libxl.offset == len(hdr)


@pytest.mark.parametrize(
    "mutate, offset, words",
    [
        (lambda h: struct.pack_into("=I", h, 32, 0x04030201), 32, "other endianness"),
        (lambda h: struct.pack_into("=I", h, 36, 3 | 8), 36, "unknown mandatory flags 0x8"),
        (lambda h: struct.pack_into("=I", h, 36, 1), 36, "legacy"),
        (lambda h: struct.pack_into("=I", h, 44, 3), 44, "cannot hold"),
        (lambda h: struct.pack_into("=I", h, 48, 1000), 48, "exceeds"),
    ],
    ids=["byteorder", "unknown-flag", "no-streamv2", "optdata-too-short", "config-too-long"],
)
def test_xl_header_errors(tmp_path, mutate, offset, words):
    h = bytearray(xl_header(b'{"x": 2}\0'))
    mutate(h)
    e = scan_error(tmp_path, xl_file(bytes(h)))
    assert e.offset == offset
    assert words in str(e)


def test_xl_json_configuration_must_parse(tmp_path):
    e = scan_error(tmp_path, xl_file(xl_header(b'{"x": ]\0')))
    assert e.offset == 52 + 6
    assert "does not parse" in str(e)


def test_xl_json_configuration_must_be_nul_terminated(tmp_path):
    e = scan_error(tmp_path, xl_file(xl_header(b'{"x": 1}')))
    assert e.offset == 52 + 7
    assert "NUL-terminated" in str(e)


# --------------------------------------------------------------------------
# libxl record rules


def libxl_stream(records_after_header: bytes) -> bytes:
    return libxl_header() + records_after_header


def small_libxc(hvm=True, end=True, version=3) -> bytes:
    out = ihdr(version) + dhdr(2 if hvm else 1)
    if not hvm:
        out += rec(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0))
    if version >= 3:
        out += rec(STATIC_DATA_END)
    out += rec(PAGE_DATA, page_data([(0, 0), (1, 0)]))
    if end:
        out += rec(END)
    return out


LIBXC = small_libxc()
OFF = 16 + 8 + len(LIBXC)  # first libxl record after the libxc stream


@pytest.mark.parametrize(
    "tail, offset, words",
    [
        (rec(L_END) + b"\0" * 8, OFF + 8, "trailing data"),
        (rec(L_END) + rec(L_END), OFF + 8, "trailing data"),
        (struct.pack("<II", L_END, 4) + b"\0" * 8, OFF + 4, "must be 0"),
        (rec(L_CHECKPOINT_END) + rec(L_END), OFF, "outside a checkpoint"),
        (rec(L_LIBXC) + rec(L_END), OFF, "second LIBXC_CONTEXT"),
        (rec(L_CHECKPOINT_STATE, b"\0" * 8) + rec(L_END), OFF, "back channel"),
        (rec(0x77) + rec(L_END), OFF, "unknown libxl record type 0x00000077"),
        (rec(0x80000001) + rec(L_END), OFF, "unknown optional libxl record"),
        (emu(L_EMU_CONTEXT, b"abc", emu_id=9) + rec(L_END), OFF + 8, "unknown emulator id 9"),
        (rec(L_EMU_CONTEXT, b"abc") + rec(L_END), OFF + 4, "cannot hold the 8-byte emulator header"),
        (emu(L_XENSTORE, b"key\0value") + rec(L_END), OFF + 16 + 8, "not NUL-terminated"),
        (emu(L_XENSTORE, b"key\0") + rec(L_END), OFF + 16, "not key/value pairs"),
        (struct.pack("<II", L_EMU_CONTEXT, 9) + struct.pack("<II", 2, 0) + b"x" + b"\0\0\x01" + b"\0" * 4 + rec(L_END),
         OFF + 17 + 2, "non-zero padding"),
    ],
    ids=[
        "data-after-end", "end-twice", "end-with-body", "checkpoint-end-outside", "libxc-twice",
        "checkpoint-state", "unknown-type", "unknown-optional", "bad-emulator-id", "short-emulator",
        "xenstore-unterminated", "xenstore-odd", "bad-padding",
    ],
)
def test_libxl_record_errors(tmp_path, tail, offset, words):
    data = libxl_stream(rec(L_LIBXC) + LIBXC + tail)
    e = scan_error(tmp_path, data)
    assert words in str(e), str(e)
    assert e.offset == offset, str(e)


def test_first_libxl_record_must_be_libxc_context(tmp_path):
    e = scan_error(tmp_path, libxl_stream(emu(L_EMU_CONTEXT, b"q") + rec(L_LIBXC) + LIBXC + rec(L_END)))
    assert e.offset == 16 and "expected LIBXC_CONTEXT" in str(e)


def test_libxl_header_errors(tmp_path):
    good = libxl_stream(rec(L_LIBXC) + LIBXC + rec(L_END))
    assert scan(tmp_path, good).ended == "END"
    for offset, value, words in [(8, 3, "version 3"), (12, 1, "big-endian"), (12, 4, "reserved bits 0x4")]:
        data = bytearray(good)
        struct.pack_into(">I", data, offset, value)
        e = scan_error(tmp_path, bytes(data))
        assert e.offset == offset and words in str(e)
    data = bytearray(good)
    struct.pack_into(">I", data, 12, 2)  # legacy-converted flag: accepted and reported
    assert scan(tmp_path, bytes(data)).libxl.legacy


def test_end_inside_a_checkpoint(tmp_path):
    libxc = small_libxc(end=False) + rec(CHECKPOINT)
    data = libxl_stream(rec(L_LIBXC) + libxc + rec(L_END))
    e = scan_error(tmp_path, data)
    assert e.offset == 24 + len(libxc) and "inside a checkpoint" in str(e)


def test_checkpoint_without_checkpoint_end_is_truncated(tmp_path):
    libxc = small_libxc(end=False) + rec(CHECKPOINT)
    data = libxl_stream(rec(L_LIBXC) + libxc + emu(L_EMU_CONTEXT, b"q"))
    e = scan_error(tmp_path, data)
    assert e.offset == len(data) and "no CHECKPOINT_END" in str(e)


def test_checkpointed_stream_may_end_with_libxc_end(tmp_path):
    libxc = small_libxc(end=False) + rec(CHECKPOINT)
    data = libxl_stream(
        rec(L_LIBXC) + libxc + rec(L_CHECKPOINT_END)
        + rec(PAGE_DATA, page_data([(2, 0)])) + rec(END) + rec(L_END)
    )
    s = scan(tmp_path, data)
    assert s.ended == "END" and s.checkpoints == 1 and s.pages == 3


# --------------------------------------------------------------------------
# libxc record rules


def libxc_with(records: bytes, hvm=True, version=3) -> bytes:
    return ihdr(version) + dhdr(2 if hvm else 1) + records


H = 40  # offset of the first libxc record
SDE = rec(STATIC_DATA_END)
PD = rec(PAGE_DATA, page_data([(5, 0)]))


def pd_raw(count, words, pages, res=0):
    body = struct.pack("<II", count, res) + b"".join(struct.pack("<Q", w) for w in words) + b"\x33" * (PAGE * pages)
    return rec(PAGE_DATA, body)


@pytest.mark.parametrize(
    "records, offset, words, hvm, version",
    [
        (SDE + struct.pack("<II", 0x55, 0) + rec(END), H + 8, "unknown mandatory libxc record type 0x00000055", True, 3),
        (SDE + struct.pack("<II", PAGE_DATA, (128 << 20) + 1), H + 12, "exceeds the maximum", True, 3),
        (SDE + pd_raw(0, [], 0) + rec(END), H + 16, "no pfns", True, 3),
        (SDE + pd_raw(3, [1], 0) + rec(END), H + 16, "does not fit", True, 3),
        (SDE + pd_raw(1, [1], 2) + rec(END), H + 12, "expected 4112", True, 3),
        (SDE + pd_raw(1, [1], 0) + rec(END), H + 12, "expected 4112", True, 3),
        (SDE + pd_raw(2, [1, 0xF << 60 | 2], 2) + rec(END), H + 12, "expected 4120", True, 3),
        (SDE + pd_raw(2, [1, 0xD << 60 | 2], 2) + rec(END), H + 12, "1 pages with data", True, 3),
        (SDE + pd_raw(2, [1, 0x5 << 60 | 2], 2) + rec(END), H + 8 + 16 + 8, "invalid page type 5", True, 3),
        (SDE + pd_raw(2, [1, 0x8 << 60 | 2], 2) + rec(END), H + 8 + 16 + 8, "invalid page type 8", True, 3),
        (SDE + pd_raw(1, [1 << 55], 1) + rec(END), H + 8 + 16, "reserved bits", True, 3),
        (SDE + pd_raw(1, [1], 1, res=1) + rec(END), H + 8 + 12, "reserved field of PAGE_DATA", True, 3),
        (PD + rec(END), H, "before STATIC_DATA_END", True, 3),
        (SDE + SDE + rec(END), H + 8, "second STATIC_DATA_END", True, 3),
        (SDE + PD + rec(END), H, "in a version 2 libxc stream", True, 2),
        (rec(CPUID_POLICY, b"\0" * 24) + PD + rec(END), H, "in a version 2 libxc stream", True, 2),
        (SDE + rec(SHARED_INFO, b"\0" * PAGE) + rec(END), H + 8, "SHARED_INFO record in an x86 HVM stream", True, 3),
        (SDE + rec(HVM_CONTEXT, hvm_context(1)) + rec(END), H + 8, "HVM_CONTEXT record in an x86 PV stream", False, 3),
        (SDE + rec(TOOLSTACK, b"x") + rec(END), H + 8, "TOOLSTACK", True, 3),
        (SDE + rec(DIRTY_PFN_LIST, b"\0" * 8) + rec(END), H + 8, "back channel", True, 3),
        (SDE + rec(END, b"\0" * 8), H + 12, "expected 0", True, 3),
        (SDE + rec(CHECKPOINT, b"\0" * 8), H + 12, "expected 0", True, 3),
        (SDE + PD + rec(TSC_INFO, b"\0" * 20) + rec(END), H + 8 + len(PD) + 4, "expected 24", True, 3),
        (SDE + PD + rec(TSC_INFO, struct.pack("<IIQII", 0, 0, 0, 0, 1)) + rec(END), H + 8 + len(PD) + 28,
         "reserved field of X86_TSC_INFO", True, 3),
        (SDE + rec(HVM_PARAMS, struct.pack("<II", 2, 0) + b"\0" * 16) + rec(END), H + 12, "expected 40", True, 3),
        (SDE + rec(HVM_CONTEXT) + rec(END), H + 12, "more than 0", True, 3),
        (rec(CPUID_POLICY, b"\0" * 25) + SDE + rec(END), H + 4, "multiple of 24", True, 3),
        (rec(MSR_POLICY, b"\0" * 8) + SDE + rec(END), H + 4, "multiple of 16", True, 3),
        (SDE + struct.pack("<II", VERIFY := 13, 0) + b"" + rec(END), None, None, True, 3),
        # PV ordering and contents
        (SDE + rec(P2M_FRAMES, struct.pack("<II", 0, 0) + b"\0" * 8) + rec(END), H + 8, "before X86_PV_INFO", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0)) * 2, H + 16, "second X86_PV_INFO", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 6, 4, 0, 0)), H + 8, "guest width 6", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 2, 0, 0)), H + 9, "levels 2", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 4, 1, 0)), H + 10, "reserved field of X86_PV_INFO", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0)) + rec(P2M_FRAMES, struct.pack("<II", 0, 0) + b"\0" * 8),
         H + 16, "before STATIC_DATA_END", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0)) + SDE
         + rec(P2M_FRAMES, struct.pack("<II", 0, 1000) + b"\0" * 8), H + 24 + 4, "expected 24", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0)) + SDE
         + rec(P2M_FRAMES, struct.pack("<II", 10, 1) + b"\0" * 8), H + 24 + 8, "start pfn 10 > end pfn 1", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0)) + rec(VCPU_BASIC, struct.pack("<II", 0, 5) + b"x"),
         H + 16 + 12, "reserved field of X86_PV_VCPU_BASIC", False, 3),
        (rec(PV_INFO, struct.pack("<BBHI", 8, 4, 0, 0)) + rec(SHARED_INFO, b"\0" * 100), H + 16 + 4, "expected 4096", False, 3),
    ],
    ids=lambda v: "stream" if isinstance(v, bytes) else (v.replace(" ", "_") if isinstance(v, str) else None),
)
def test_libxc_record_errors(tmp_path, records, offset, words, hvm, version):
    data = libxc_with(records, hvm=hvm, version=version)
    if offset is None:  # a control case that must pass
        assert scan(tmp_path, data).ended == "END"
        return
    e = scan_error(tmp_path, data)
    assert words in str(e), str(e)
    assert e.offset == offset, str(e)


def test_nonzero_libxc_padding(tmp_path):
    body = page_data([(1, 0xF)])  # 16 bytes: no padding; use an odd-sized record
    data = libxc_with(SDE + rec(PAGE_DATA, body) + struct.pack("<II", CPUID_POLICY, 24) + b"\0" * 24 + rec(END))
    scan(tmp_path, data)  # aligned: fine
    rec_hc = rec(HVM_CONTEXT, hvm_context(1) + b"abc")
    bad = bytearray(libxc_with(SDE + rec_hc + rec(END)))
    pad_at = H + 8 + 8 + len(hvm_context(1)) + 3
    bad[pad_at + 2] = 1
    e = scan_error(tmp_path, bytes(bad))
    assert e.offset == pad_at + 2 and "non-zero padding" in str(e)


def test_optional_libxc_records_are_skipped(tmp_path):
    data = libxc_with(SDE + rec(0x80000123, b"opaque stuff") + PD + rec(END))
    s = scan(tmp_path, data)
    assert s.optional_records_skipped == 1
    assert s.libxc_by_type["0x80000123"].count == 1


def test_page_types_without_data(tmp_path):
    entries = [(1, 0xD), (2, 0xE), (3, 0xF), (4, 0), (5, 0x9)]
    data = libxc_with(SDE + rec(PAGE_DATA, page_data(entries)) + rec(END))
    s = scan(tmp_path, data)
    assert s.pages == 5 and s.pages_with_data == 2
    assert s.page_types == {"BROKEN": 1, "XALLOC": 1, "XTAB": 1, "NOTAB": 1, "L1TAB_PINNED": 1}


def test_version_2_stream_without_static_data_end(tmp_path):
    s = scan(tmp_path, libxc_with(PD + rec(END), version=2))
    assert s.libxc.version == 2 and s.pages == 1


def test_bare_libxc_checkpoint_stream_ends_after_checkpoint(tmp_path):
    data = libxc_with(SDE + PD + rec(CHECKPOINT) + PD + rec(CHECKPOINT))
    s = scan(tmp_path, data)
    assert s.ended == "checkpoint" and s.checkpoints == 2 and s.pages_per_checkpoint == [1, 1]


def test_large_page_data_record_is_read_in_chunks(tmp_path):
    # 20000 pfns without data: the pfn array alone is 160 KB (several chunks)
    n = 20000
    body = struct.pack("<II", n, 0) + b"".join(struct.pack("<Q", (0xF << 60) | i) for i in range(n))
    data = libxc_with(SDE + rec(PAGE_DATA, body) + rec(END))
    s = scan(tmp_path, data)
    assert s.pages == n and s.pfns.count == n and s.pages_with_data == 0
    # a bad word deep in the array is reported at its own offset
    bad = bytearray(data)
    idx = 17000
    at = H + 8 + 8 + 8 + 8 * idx
    struct.pack_into("<Q", bad, at, (6 << 60) | idx)
    e = scan_error(tmp_path, bytes(bad))
    assert e.offset == at and f"index {idx}" in str(e)


def test_unknown_format(tmp_path):
    e = scan_error(tmp_path, b"\x7fELF" + b"\0" * 100)
    assert e.offset == 0 and "unknown magic" in str(e)
    e = scan_error(tmp_path, b"")
    assert e.offset == 0 and "empty" in str(e)


def test_explicit_format_overrides_detection(tmp_path):
    g = make("libxc", hvm=True)
    e = scan_error(tmp_path, g.data, fmt="xl")
    assert e.offset == 0 and "bad magic" in str(e)


def test_huge_configuration_is_streamed_past(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_xl, "MAX_JSON_CONFIG", 1000)
    cfg = b'{"pad": "' + b"x" * 5000 + b'"}\0'
    g = make("libxl", hvm=True)
    s = scan(tmp_path, xl_header(cfg) + g.data)
    assert s.xl.config is None and s.xl.config_len == len(cfg)
    assert s.to_dict()["xl_header"]["config_format"] == "json"
    assert "too large to show" in stream.format_summary(s)
    e = scan_error(tmp_path, xl_header(cfg[:-1] + b"}") + g.data)
    assert e.offset == 52 + len(cfg) - 1 and "NUL-terminated" in str(e)


def test_many_distinct_optional_record_types_stay_bounded(tmp_path):
    many = b"".join(rec(0x80000000 + i, b"") for i in range(500))
    s = scan(tmp_path, libxc_with(SDE + many + PD + rec(END)))
    assert s.optional_records_skipped == 500
    assert len(s.libxc_by_type) <= 64 + 3
    assert s.libxc_by_type["other"].count > 400
    assert s.libxc_by_type["PAGE_DATA"].count == s.libxc_by_type["END"].count == 1
    assert sum(v.count for v in s.libxc_by_type.values()) == 500 + 3


@pytest.mark.parametrize("readahead", [False, True])
def test_non_blocking_pipe(tmp_path, readahead):
    g = make("libxc", hvm=True)
    r, w = os.pipe()
    os.set_blocking(r, False)

    def feed():
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(g.data), 4096):
                f.write(g.data[i : i + 4096])
                f.flush()

    t = threading.Thread(target=feed)
    t.start()
    try:
        s = stream.StreamParser(stream.StreamReader(r, readahead=readahead)).scan("libxc")
        assert s.pages == g.pages and s.end_offset == len(g.data)
    finally:
        t.join()
        os.close(r)
