"""Restores of corrupted streams through Debian's helper: each fails with an
errno and an ERROR log, never a crash; optional records and v2 streams are
accepted."""

from __future__ import annotations

import errno
import struct

import pytest

from tests.support import stream as st
from tests.support.simhost import assert_completed, restore_from_file, save_to_file

XTL_ERROR = 8


@pytest.fixture(scope="module")
def streams(debian_helper, tmp_path_factory):
    """Good 1 MiB PV and HVM streams (vcpus=2)."""
    from xensr.testing import SimulatedHost
    d = tmp_path_factory.mktemp("streams")
    out = {}
    with SimulatedHost(d / "sim", auto_suspend=True) as host:
        for kind in ("pv", "hvm"):
            dom = host.create_domain(1, vcpus=2, kind=kind)
            t, data = save_to_file(debian_helper, host, dom, d / kind)
            assert_completed(t)
            out[kind] = data
    return out


def build(header: bytes, records) -> bytes:
    out = bytearray(header)
    for rtype, body, *pad in records:
        out += struct.pack("<II", rtype, len(body)) + body
        padding = (-len(body)) % 8
        out += pad[0] if pad else bytes(padding)
    return bytes(out)


def records_of(data: bytes):
    s = st.parse(data, allow_eof_without_end=True)
    return data[:40], [(r.type, r.body) for r in s.records], s


def insert_after(recs, name, new):
    i = next(i for i, r in enumerate(recs) if r[0] == st.TYPE[name])
    return recs[:i + 1] + [new] + recs[i + 1:]


def without(recs, name):
    return [r for r in recs if r[0] != st.TYPE[name]]


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def first(recs, name):
    return next(i for i, r in enumerate(recs) if r[0] == st.TYPE[name])


def mutate(data: bytes, how: str) -> bytes:
    hdr, recs, s = records_of(data)
    pd = first(recs, "PAGE_DATA")
    if how == "empty":
        return b""
    if how == "bad-marker":
        return patch(data, 0, b"\xfe")
    if how == "bad-id":
        return patch(data, 8, b"XENG")
    if how == "bad-version":
        return patch(data, 12, struct.pack(">I", 4))
    if how == "big-endian":
        return patch(data, 16, struct.pack(">H", 1))
    if how == "ihdr-reserved":
        return patch(data, 18, b"\x01")
    if how == "dhdr-type":
        return patch(data, 24, struct.pack("<I", 3))
    if how == "page-shift":
        return patch(data, 28, struct.pack("<H", 13))
    if how == "dhdr-reserved":
        return patch(data, 30, b"\x01")
    if how == "huge-length":
        return patch(data, 44, struct.pack("<I", (128 << 20) + 8))
    if how == "bad-padding":
        return build(hdr, insert_after(recs, "STATIC_DATA_END",
                                       (0x80000123, b"abc", b"\0\0\0\0\x01")))
    if how == "unknown-mandatory":
        return build(hdr, insert_after(recs, "STATIC_DATA_END", (0x13, b"")))
    if how == "toolstack":
        return build(hdr, insert_after(recs, "STATIC_DATA_END", (0x0B, b"12345678")))
    if how == "truncated-header":
        return data[:30]
    if how == "truncated-record-header":
        return data[:44]
    if how == "truncated-page-data":
        return data[:s.records[pd].offset + 5000]
    if how == "truncated-before-end":
        return data[:s.records[-1].offset]
    if how == "pages-before-static-data-end":
        sde = first(recs, "STATIC_DATA_END")
        page = recs[pd]
        rest = [r for i, r in enumerate(recs) if i != pd]
        return build(hdr, rest[:sde] + [page] + rest[sde:])
    if how == "cpuid-after-static-data-end":
        cp = first(recs, "X86_CPUID_POLICY")
        rec = recs[cp]
        rest = [r for i, r in enumerate(recs) if i != cp]
        return build(hdr, insert_after(rest, "STATIC_DATA_END", rec))
    if how == "two-static-data-ends":
        return build(hdr, insert_after(recs, "STATIC_DATA_END", (0x10, b"")))
    if how == "duplicate-pv-info":
        return build(hdr, insert_after(recs, "X86_PV_INFO", recs[first(recs, "X86_PV_INFO")]))
    if how == "page-count":
        body = bytearray(recs[pd][1])
        struct.pack_into("<I", body, 0, struct.unpack_from("<I", body)[0] - 1)
        return build(hdr, recs[:pd] + [(1, bytes(body))] + recs[pd + 1:])
    if how == "pfn-beyond-max":
        body = bytearray(recs[pd][1])
        struct.pack_into("<Q", body, 8, 1 << 40)
        return build(hdr, recs[:pd] + [(1, bytes(body))] + recs[pd + 1:])
    if how == "pfn-reserved-bits":
        body = bytearray(recs[pd][1])
        struct.pack_into("<Q", body, 8, 1 << 55)
        return build(hdr, recs[:pd] + [(1, bytes(body))] + recs[pd + 1:])
    if how == "pfn-unknown-type":
        body = bytearray(recs[pd][1])
        struct.pack_into("<Q", body, 8, 5 << 60)
        return build(hdr, recs[:pd] + [(1, bytes(body))] + recs[pd + 1:])
    if how == "checkpoint-in-plain-stream":
        return build(hdr, insert_after(recs, "PAGE_DATA", (0x0E, b"")))
    if how == "end-with-length":
        return build(hdr, recs[:-1] + [(0, bytes(8))])
    if how == "no-vcpu0":
        return build(hdr, without(recs, "X86_PV_VCPU_BASIC"))
    if how == "p2m-frames-length":
        i = first(recs, "X86_PV_P2M_FRAMES")
        return build(hdr, recs[:i] + [(3, recs[i][1] + bytes(8))] + recs[i + 1:])
    if how == "vcpu-basic-size":
        i = first(recs, "X86_PV_VCPU_BASIC")
        return build(hdr, recs[:i] + [(4, recs[i][1][:-8])] + recs[i + 1:])
    if how == "tsc-size":
        i = first(recs, "X86_TSC_INFO")
        return build(hdr, recs[:i] + [(8, recs[i][1] + bytes(8))] + recs[i + 1:])
    if how == "hvm-context-magic":
        i = first(recs, "HVM_CONTEXT")
        body = bytearray(recs[i][1])
        body[8] ^= 0xff
        return build(hdr, recs[:i] + [(9, bytes(body))] + recs[i + 1:])
    if how == "hvm-params-length":
        i = first(recs, "HVM_PARAMS")
        return build(hdr, recs[:i] + [(0x0A, recs[i][1][:-8])] + recs[i + 1:])
    if how == "pv-record-in-hvm-stream":
        return build(hdr, insert_after(recs, "PAGE_DATA", (7, bytes(4096))))
    raise AssertionError(how)


CASES = [
    # (stream kind, mutation, errno, text in the ERROR log, "Restore failed" logged)
    ("pv", "empty", errno.EIO, "Failed to read Image Header from stream", False),
    ("pv", "bad-marker", errno.EINVAL, "Invalid marker: Got 0xfffffffffffffffe", False),
    ("pv", "bad-id", errno.EINVAL, "Invalid ID: Expected 0x58454e46, Got 0x58454e47", False),
    ("pv", "bad-version", errno.EINVAL, "Invalid Version: Expected 2 <= ver <= 3, Got 4", False),
    ("pv", "big-endian", errno.EINVAL, "Unable to handle big endian streams", False),
    ("pv", "ihdr-reserved", errno.EINVAL, "Reserved bits set in Image Header", False),
    ("pv", "dhdr-type", errno.EINVAL, "Unable to restore Reserved domain", True),
    ("pv", "page-shift", errno.EINVAL, "Invalid page size 8192", False),
    ("pv", "dhdr-reserved", errno.EINVAL, "Reserved bits set in Domain Header", False),
    ("pv", "huge-length", errno.EINVAL, "Record (0x00000002, x86 PV info) length 0x8000008 exceeds max (0x8000000)", True),
    ("pv", "bad-padding", errno.EINVAL, "Record (0x80000123, Reserved) has non-zero padding", True),
    ("pv", "unknown-mandatory", errno.EINVAL, "Mandatory record 0x13 (Reserved) not handled", True),
    ("pv", "toolstack", errno.EINVAL, "Mandatory record 0xb (Toolstack) not handled", True),
    ("pv", "truncated-header", errno.EIO, "Failed to read Domain Header from stream", False),
    ("pv", "truncated-record-header", errno.EIO, "Failed to read Record Header from stream", True),
    ("pv", "truncated-page-data", errno.EIO, "Failed to read 1050632 bytes of data for record (0x00000001, Page data)", True),
    ("pv", "truncated-before-end", errno.EIO, "Failed to read Record Header from stream", True),
    ("pv", "pages-before-static-data-end", errno.EINVAL, "No STATIC_DATA_END seen", True),
    ("hvm", "pages-before-static-data-end", errno.EINVAL, "No STATIC_DATA_END seen", True),
    ("pv", "cpuid-after-static-data-end", errno.EINVAL, "X86_CPUID_POLICY record after STATIC_DATA_END", True),
    ("pv", "two-static-data-ends", errno.EINVAL, "Multiple STATIC_DATA_END records found", True),
    ("pv", "duplicate-pv-info", errno.EINVAL, "Already received X86_PV_INFO record", True),
    ("pv", "page-count", errno.EINVAL, "PAGE_DATA record wrong size", True),
    ("pv", "pfn-beyond-max", errno.EINVAL, "pfn 0x10000000000 (index 0) outside domain maximum", True),
    ("hvm", "pfn-beyond-max", errno.EINVAL, "pfn 0x10000000000 (index 0) outside domain maximum", True),
    ("pv", "pfn-reserved-bits", errno.EINVAL, "Reserved bits set in pfn[0]", True),
    ("pv", "pfn-unknown-type", errno.EINVAL, "Unknown type 0x50000000 for pfn 0 (index 0)", True),
    ("pv", "checkpoint-in-plain-stream", errno.EINVAL, "Found checkpoint in non-checkpointed stream", True),
    ("pv", "end-with-length", errno.EINVAL, "END record with length 8", True),
    ("pv", "no-vcpu0", errno.EINVAL, "Sender didn't send vcpu0's basic state", True),
    ("pv", "p2m-frames-length", errno.EINVAL, "X86_PV_P2M_FRAMES record wrong size", True),
    ("pv", "vcpu-basic-size", errno.EINVAL, "X86_PV_VCPU_BASIC record wrong size: expected 5176, got 5168", True),
    ("pv", "tsc-size", errno.EINVAL, "X86_TSC_INFO record wrong size: length 32, expected 24", True),
    ("hvm", "tsc-size", errno.EINVAL, "X86_TSC_INFO record wrong size: length 32, expected 24", True),
    ("hvm", "hvm-context-magic", errno.EINVAL, "Unable to restore HVM context (22 = Invalid argument)", True),
    ("hvm", "hvm-params-length", errno.EINVAL, "HVM_PARAMS record truncated", True),
    ("hvm", "pv-record-in-hvm-stream", errno.EINVAL, "Mandatory record 0x7 (Shared info) not handled", True),
]


@pytest.mark.parametrize("kind,how,err,text,restore_failed", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_corrupt_stream(debian_helper, simulated_host, streams, tmp_path, kind, how, err,
                        text, restore_failed):
    host = simulated_host
    path = tmp_path / "bad"
    path.write_bytes(mutate(streams[kind], how))
    target = host.create_empty_domain()
    t = restore_from_file(debian_helper, host, target, path, timeout=30)
    assert_completed(t, retval=-1)
    assert t.complete["errnoval"] == err, t.summary()
    errors = [m["formatted"] for m in t.logs if m["level"] == XTL_ERROR and m["context"] == "xc"]
    assert any(text in e for e in errors), t.summary()
    assert any(e.startswith("Restore failed") for e in errors) == restore_failed
    assert [(m["store_gfn"], m["console_gfn"]) for m in t.restore_results] == [(0, 0)]
    state = host.domain_state(target)
    assert state["restore_result"] == "failed" and state["state"] == "paused"


def test_optional_record_skipped(debian_helper, simulated_host, streams, tmp_path):
    hdr, recs, _ = records_of(streams["pv"])
    path = tmp_path / "opt"
    path.write_bytes(build(hdr, insert_after(recs, "STATIC_DATA_END", (0x80000123, b"abc"))))
    t = restore_from_file(debian_helper, simulated_host, simulated_host.create_empty_domain(), path)
    assert_completed(t)
    assert "Ignoring optional record 0x80000123 (Reserved)" in t.log_text()


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_v2_stream(debian_helper, simulated_host, streams, tmp_path, kind):
    """A v2 stream (no STATIC_DATA_END, no CPU policy): STATIC_DATA_END is
    inferred and static_data_done reports both policies missing."""
    hdr, recs, _ = records_of(streams[kind])
    hdr = patch(hdr, 12, struct.pack(">I", 2))
    for name in ("STATIC_DATA_END", "X86_CPUID_POLICY", "X86_MSR_POLICY"):
        recs = without(recs, name)
    path = tmp_path / "v2"
    path.write_bytes(build(hdr, recs))
    host = simulated_host
    target = host.create_empty_domain()
    t = restore_from_file(debian_helper, host, target, path)
    assert_completed(t)
    assert t.find("static_data_done")[0]["missing"] == 3
    assert host.domain_state(target)["kind"] == kind

    # A failing static_data_done fails the restore, the way libxenguest
    # 4.17 does: its caller reads the callback's failure as "not handled".
    target = host.create_empty_domain()
    t = restore_from_file(debian_helper, host, target, path, replies={"static_data_done": -3})
    assert_completed(t, retval=-1)
    text = t.log_text()
    assert "static_data_done() callback failed: 1" in text
    assert "Inferred STATIC_DATA_END record failed" in text
    first_data = "Page data" if kind == "hvm" else "x86 PV P2M frames"
    assert f"not handled" in text and first_data in text


def test_static_data_done_refused_v3(debian_helper, simulated_host, streams, tmp_path):
    path = tmp_path / "s"
    path.write_bytes(streams["hvm"])
    t = restore_from_file(debian_helper, simulated_host, simulated_host.create_empty_domain(),
                          path, replies={"static_data_done": 1})
    assert_completed(t, retval=-1)
    assert "Mandatory record 0x10 (Static data end) not handled" in t.log_text()


def test_garbage_streams_never_crash(debian_helper, simulated_host, streams, tmp_path):
    """Random corruption of bytes in a good stream: always a clean end."""
    import random
    rng = random.Random(4)
    good = streams["pv"]
    host = simulated_host
    for i in range(12):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data) if i % 2 else 200)] = rng.randrange(256)
        path = tmp_path / f"g{i}"
        path.write_bytes(bytes(data))
        t = restore_from_file(debian_helper, host, host.create_empty_domain(), path, timeout=30)
        assert t.returncode == 0 and t.complete is not None, t.summary()
        if t.complete["retval"]:
            assert t.complete["errnoval"] != 0
