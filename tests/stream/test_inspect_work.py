"""The work of a scan is bounded by the bytes it reads, for every record
shape: counted in Python-level steps (calls of the parser's per-record and
per-pfn code), never in seconds."""

from __future__ import annotations

import struct

import pytest

from tests.stream.gen import (
    CHECKPOINT,
    END,
    HVM_CONTEXT,
    HVM_PARAMS,
    PAGE_DATA,
    STATIC_DATA_END,
    TSC_INFO,
    VERIFY,
    dhdr,
    hvm_context,
    ihdr,
    page_data,
    rec,
)
from xensr import stream
from xensr.stream import libxc, summary
from xensr.stream.reader import READ_CHUNK

XTAB, BROKEN = 0xF, 0xD
OPTIONAL = 0x80000042


def hvm_stream(*records: bytes, end: bool = True) -> bytes:
    body = ihdr() + dhdr(2) + rec(STATIC_DATA_END) + b"".join(records)
    return body + (rec(HVM_CONTEXT, hvm_context(2)) + rec(END) if end else b"")


def no_data_record(pfns) -> bytes:
    """One PAGE_DATA record of XTAB pfns: 8 bytes a pfn, no page."""
    words = struct.pack(f"<{len(pfns)}Q", *((XTAB << 60) | p for p in pfns))
    return struct.pack("<II", PAGE_DATA, 8 + len(words)) + struct.pack("<II", len(pfns), 0) + words


class Counter:
    """Counts the calls of a method while a scan runs."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        real = getattr(owner, name)

        def counted(*args, **kw):
            self.calls += 1
            return real(*args, **kw)

        monkeypatch.setattr(owner, name, counted)


def scan(tmp_path, data: bytes):
    p = tmp_path / "s.libxc"
    p.write_bytes(data)
    return stream.scan_file(str(p), fmt="libxc")


N = 1 << 20  # pfns: an 8 MiB record
CHUNK_WORDS = libxc._PFN_CHUNK // 8


@pytest.mark.parametrize("order", ["in order", "scattered"])
def test_page_data_without_data_costs_no_step_per_pfn(tmp_path, monkeypatch, order):
    pfns = range(N) if order == "in order" else [(i * 1000003) & (N - 1) for i in range(N)]
    one_by_one = Counter(monkeypatch, summary._PfnSet, "add")
    chunks = Counter(monkeypatch, libxc.LibxcParser, "_pfn_chunk")
    s = scan(tmp_path, hvm_stream(no_data_record(pfns)))
    assert s.pages == N and s.page_types == {"XTAB": N} and s.pages_with_data == 0
    # A step per chunk of pfns; one by one only within a fixed allowance.
    assert chunks.calls == N // CHUNK_WORDS
    assert one_by_one.calls <= summary._SCATTERED_ALLOWANCE
    if order == "in order":
        assert s.pfns.count == N and s.pfns.max_pfn == N - 1
    else:
        # Too many scattered pfns without data to count them exactly.
        assert s.pfns.overflowed and s.pfns.max_pfn == N - 1
        assert s.to_dict()["pages"]["distinct_pfns"] is None


def test_empty_records_cost_a_step_per_buffer_not_per_record(tmp_path, monkeypatch):
    n = 1 << 20  # 8 MiB of empty VERIFY records
    records = Counter(monkeypatch, libxc.LibxcParser, "_dispatch")
    s = scan(tmp_path, hvm_stream(rec(VERIFY) * n))
    assert s.libxc_by_type["VERIFY"].count == n
    assert s.libxc_by_type["VERIFY"].bytes == 8 * n
    # A parse per read-ahead buffer (and the few other records), not per record.
    assert records.calls <= 2 * (8 * n // READ_CHUNK + 1) + 4


def test_empty_records_of_differing_types_cost_a_step_per_block(tmp_path, monkeypatch):
    n = 1 << 19
    records = Counter(monkeypatch, libxc.LibxcParser, "_dispatch")
    s = scan(tmp_path, hvm_stream((rec(VERIFY) + rec(OPTIONAL) + rec(OPTIONAL + 1)) * n))
    assert s.libxc_by_type["VERIFY"].count == n
    assert s.libxc_by_type[f"0x{OPTIONAL + 1:08x}"].count == n
    assert s.optional_records_skipped == 2 * n
    assert records.calls <= 4


@pytest.mark.parametrize("shape", [
    "verify", "optional", "page data", "page data with data", "tsc", "params", "mixed", "checkpoints",
    "empty mixed", "many optional types",
])
def test_runs_of_records_summarise_as_one_by_one(tmp_path, shape):
    """A scan that consumes runs of identical records at once finds what a
    record-by-record parse (a reader without read-ahead) does."""
    tsc = struct.pack("<IIQII", 1, 2400000, 5, 1, 0)
    params = struct.pack("<II", 1, 0) + struct.pack("<QQ", 1, 2)
    small = page_data([(7, XTAB), (9, BROKEN), (11, 0)])
    body = {
        "verify": rec(VERIFY) * 5000,
        "optional": rec(OPTIONAL, b"abc") * 5000,
        "page data": rec(PAGE_DATA, page_data([(3, XTAB), (4, XTAB)])) * 5000,
        "page data with data": rec(PAGE_DATA, small) * 300,
        "tsc": rec(TSC_INFO, tsc) * 4000,
        "params": rec(HVM_PARAMS, params) * 4000,
        "mixed": (rec(VERIFY) * 3 + rec(OPTIONAL) + rec(PAGE_DATA, small)) * 500,
        "checkpoints": (rec(PAGE_DATA, page_data([(5, XTAB)])) * 700 + rec(CHECKPOINT)) * 3,
        "empty mixed": (rec(VERIFY) * 2 + rec(OPTIONAL) + rec(VERIFY) + rec(OPTIONAL + 7)) * 3000
        + rec(TSC_INFO, tsc) + rec(VERIFY) * 10,
        # More optional types than the summary names one by one ("other").
        "many optional types": b"".join(rec(OPTIONAL + i % 100) for i in range(20000)),
    }[shape]
    data = hvm_stream(body, end=shape != "checkpoints")
    fast = scan(tmp_path, data)
    p = tmp_path / "s.libxc"
    with open(p, "rb", buffering=0) as f:
        reader = stream.StreamReader(f.fileno())  # no read-ahead: record by record
        slow = stream.StreamParser(reader, stream.Summary(path=str(p), size=len(data))).scan("libxc")
    assert fast.to_dict() == slow.to_dict()
    assert fast.libxc_bytes == len(data)


def test_the_inspect_benchmark_reports_every_shape():
    """Runs (no timing asserted): every shape measured, each ratio given."""
    from benchmarks import inspectspeed

    res = inspectspeed.run(quick=True, reps=1)
    (group,) = res.groups
    assert [s.variant for s in group.series] == list(inspectspeed.SHAPES)
    assert all(len(s.samples) == 1 and s.samples[0] > 0 for s in group.series)
    assert {t.name.split(" / ")[0] for t in res.targets} == set(inspectspeed.SHAPES[1:])
    assert all(t.value == t.value for t in res.targets)  # measured, not NaN
