"""6. ``xensr inspect`` on hostile but valid streams, against a normal one.

Each stream is a bare libxc v3 stream (HVM) of a given size, written to a
temporary file once; every variant is one :func:`xensr.stream.scan_file`
of its file, in this process.  The figure is the time per MiB of stream,
and the ratio is to the normal stream of the same run: a scan must cost
about the same per byte whatever the records look like.

* normal: PAGE_DATA records of 1024 pages each (pages with data), pfns in
  order, as libxenguest's first round sends them;
* PAGE_DATA without data, in order / scattered: one record as long as a
  record may be (128 MiB: 16M pfns) of XTAB pfns (no page follows), pfns
  in order or spread over a 64 GiB guest;
* empty VERIFY records: the stream made of 8-byte records;
* mixed empty records: VERIFY and an optional record type alternating, so
  that no two neighbours are the same.

Before this release the scan cost about 1 us a pfn and 3 us a record.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from typing import Callable, Dict, Tuple

from .harness import Group, Result, Series, Target, interleave

MIB = 1 << 20
PAGE = 4096
# libxc record types and the v3 image/domain headers.
END, PAGE_DATA, HVM_CONTEXT, VERIFY, STATIC_DATA_END = 0x00, 0x01, 0x09, 0x0D, 0x10
OPTIONAL_EMPTY = 0x80000042
XTAB = 0xF << 60
REC_LENGTH_MAX = 128 << 20


def _rec(rtype: int, body: bytes = b"") -> bytes:
    return struct.pack("<II", rtype, len(body)) + body + b"\0" * (-len(body) % 8)


def _head() -> bytes:
    ihdr = struct.pack(">QIIHHI", 0xFFFFFFFFFFFFFFFF, 0x58454E46, 3, 0, 0, 0)
    dhdr = struct.pack("<IHHII", 2, 12, 0, 4, 17)
    return ihdr + dhdr + _rec(STATIC_DATA_END)


def _tail() -> bytes:
    # An HVM context holding one CPU record and END.
    ctx = struct.pack("<HHI", 2, 0, 8) + b"\0" * 8 + struct.pack("<HHI", 0, 0, 0)
    return _rec(HVM_CONTEXT, ctx) + _rec(END)


def _normal(f, size: int) -> None:
    per = 1024
    body = 8 + 8 * per + PAGE * per
    for i in range(max(1, size // (body + 8))):
        f.write(struct.pack("<IIII", PAGE_DATA, body, per, 0))
        f.write(struct.pack(f"<{per}Q", *range(i * per, (i + 1) * per)))
        f.seek(PAGE * per, os.SEEK_CUR)  # the pages: a hole in a sparse file


def _no_data(f, size: int, scattered: bool) -> None:
    count = min(size, REC_LENGTH_MAX - 8) // 8
    f.write(struct.pack("<IIII", PAGE_DATA, 8 + 8 * count, count, 0))
    step = 1000003 if scattered else 1  # odd: a permutation of 0..2^24-1
    span = (1 << 24) - 1
    block = 1 << 16
    for start in range(0, count, block):
        n = min(block, count - start)
        f.write(struct.pack(f"<{n}Q", *(XTAB | ((i * step) & span) for i in range(start, start + n))))


def _empty_records(f, size: int, mixed: bool) -> None:
    unit = _rec(VERIFY) + (_rec(OPTIONAL_EMPTY) if mixed else _rec(VERIFY))
    block = unit * (MIB // len(unit))
    for _ in range(size // MIB):
        f.write(block)


def write_stream(path: str, shape: str, size: int) -> int:
    """Writes a stream of ``shape`` of about ``size`` bytes; returns its size."""
    with open(path, "wb") as f:
        f.write(_head())
        if shape == "normal":
            _normal(f, size)
        elif shape.startswith("no data"):
            _no_data(f, size, scattered=shape.endswith("scattered"))
        else:
            _empty_records(f, size, mixed=shape == "mixed empty records")
        f.write(_tail())
        return f.tell()


SHAPES = (
    "normal",
    "no data, in order",
    "no data, scattered",
    "empty VERIFY records",
    "mixed empty records",
)


def run(quick: bool, reps: int) -> Result:
    from xensr.stream import scan_file

    size = (16 if quick else 128) * MIB
    small = (4 if quick else 16) * MIB  # the empty-record shapes
    res = Result("inspect", "xensr inspect: seconds per MiB by record shape",
                 params={"MiB": size // MIB, "empty records MiB": small // MIB, "reps": reps})
    with _streams(size, small) as files:
        def scanner(path: str, nbytes: int) -> Callable[[], Dict[str, float]]:
            def one() -> Dict[str, float]:
                t0 = time.perf_counter()
                scan_file(path, fmt="libxc")
                return {"s_per_mib": (time.perf_counter() - t0) / (nbytes / MIB)}
            return one

        raw = interleave({shape: scanner(*files[shape]) for shape in SHAPES}, reps)
    group = Group(f"bare libxc streams, {size // MIB} MiB ({small // MIB} MiB of empty records)",
                  [Series(shape, "s/MiB", raw[shape]["s_per_mib"]) for shape in SHAPES],
                  baseline="normal")
    res.groups.append(group)
    for shape, bound in (("no data, in order", 25.0), ("no data, scattered", 60.0),
                         ("empty VERIFY records", 25.0), ("mixed empty records", 60.0)):
        res.targets.append(Target(f"{shape} / normal, per MiB", group.ratio(shape), bound, "<="))
    res.notes.append(
        "each file is scanned from the page cache (written just before); the "
        "normal stream's pages are holes of a sparse file that the scan seeks "
        "past. A scan takes whole chunks of pfns, runs of identical records and "
        "blocks of empty records at once; small non-empty records that differ "
        "from their neighbours (not measured here) still cost a parse each")
    return res


class _streams:
    """The stream files, in a temporary directory removed afterwards."""

    def __init__(self, size: int, small: int):
        self.size, self.small = size, small

    def __enter__(self) -> Dict[str, Tuple[str, int]]:
        self.dir = tempfile.TemporaryDirectory(prefix="xensr-bench-inspect-")
        out = {}
        for i, shape in enumerate(SHAPES):
            path = os.path.join(self.dir.name, f"{i}.libxc")
            want = self.size if i < 3 else self.small
            out[shape] = (path, write_stream(path, shape, want))
        return out

    def __exit__(self, *exc: object) -> None:
        self.dir.cleanup()

