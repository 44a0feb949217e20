"""Seed corpora for the fuzz targets, made from real runs on the simulated host.

Both helpers (xensr's and, when ``./bootstrap deps`` unpacked it, Debian's
``libxl-save-helper``) save and restore small simulated guests (PV and
HVM, live or not, plain and Remus with checkpoints), driven by the test
suite's independent reference parent; xensr's xl-file writer saves them
into xl files as ``xl save`` lays them out.  From those runs come:

* ``callout``: each helper's stdout (its frames), behind a few control
  prefixes (see ``fuzz.targets.callout``);
* ``stream``: the streams and xl files, slimmed to one page per PAGE_DATA
  record so that they fit the fuzzer's input size, behind each mode byte;
* ``helper``: the command lines the parent used and the replies it wrote.

Nothing is committed: ``python -m fuzz seeds DIR`` writes them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import xensr  # noqa: E402
from xensr import _xc  # noqa: E402
from xensr import stream as xs  # noqa: E402
from xensr import xlfile  # noqa: E402
from xensr.testing import SimulatedHost  # noqa: E402
from tests.support.parent import (  # noqa: E402
    CBFLAGS_RESTORE_PLAIN, CBFLAGS_SAVE_PLAIN, CBFLAGS_SAVE_REMUS, Replies,
    Transcript, restore_args, run_helper, save_args,
)

DEBIAN_HELPER = ROOT / ".cache" / "debian" / "root" / "usr" / "lib" / "xen-4.17" / "bin" / "libxl-save-helper"

#: Control prefixes for the callout target: save/restore, EOF or not,
#: callbacks absent or answering normally, all log levels, chunkings.
CALLOUT_PREFIXES = {
    "save": [bytes([2, 0, 0, 0, 0xFF, 15, 0, 0]), bytes([0, 0x11, 0x11, 0x11, 0xFF, 15, 0, 0]),
             bytes([0, 0x32, 0x00, 0x21, 0xFF, 0, 1, 0]),
             bytes([0, 0x14, 0x44, 0x04, 0x01, 3, 7, 0])],
    "restore": [bytes([3, 0, 0, 0, 0xFF, 15, 0, 0]), bytes([1, 0x11, 0x11, 0x11, 0xFF, 15, 0, 0]),
                bytes([1, 0x34, 0x14, 0x01, 0xFF, 0, 1, 0]),
                bytes([1, 0xD4, 0x44, 0x00, 0x01, 4, 9, 0])],
}
#: Mode bytes of the stream target (see fuzz.targets.stream).
STREAM_MODES = (0, 1, 2)


def _write(out: Path, data: bytes) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


# -- slimming streams ------------------------------------------------------

def _records(data: bytes, pos: int) -> Iterator[Tuple[int, int, int]]:
    """(type, start, end) of each record from ``pos`` (end with padding)."""
    while pos + 8 <= len(data):
        rtype, length = struct.unpack_from("<II", data, pos)
        end = pos + 8 + length + (-length % 8)
        yield rtype, pos, min(end, len(data))
        pos = end


def _one_page(body: bytes) -> bytes:
    """A PAGE_DATA body cut to its first pfn (and its page, if typed so)."""
    count, = struct.unpack_from("<I", body, 0)
    if count == 0:
        return body
    pfn, = struct.unpack_from("<Q", body, 8)
    first_data = 8 + 8 * count
    has_data = (pfn >> xs.PFN_TYPE_SHIFT) < 0xD
    page = body[first_data:first_data + xs.PAGE_SIZE] if has_data else b""
    return struct.pack("<IIQ", 1, 0, pfn) + page


def slim_libxc(data: bytes, start: int) -> bytes:
    """The libxc stream at ``start`` with at most two PAGE_DATA records,
    each of one page; everything else (headers, other records, whatever
    follows the libxc END) kept."""
    page_data = int(xs.LibxcRecordType.PAGE_DATA)
    end_type = int(xs.LibxcRecordType.END)
    pos = start + xs.LIBXC_IHDR.size + xs.LIBXC_DHDR.size
    out = [data[:pos]]
    pages = 0
    rest = len(data)
    for rtype, a, b in _records(data, pos):
        if rtype == page_data:
            pages += 1
            if pages <= 2:
                body = _one_page(data[a + 8:b])
                out.append(struct.pack("<II", page_data, len(body)) + body
                           + b"\0" * (-len(body) % 8))
        else:
            out.append(data[a:b])
        if rtype == end_type:
            rest = b
            break
    out.append(data[rest:])
    return b"".join(out)


# -- runs on the simulated host --------------------------------------------

class _Runs:
    """Saves and restores on one simulated host, collecting what came out."""

    def __init__(self, host: SimulatedHost, tmp: Path):
        self.host = host
        self.tmp = tmp
        self.frames: Dict[str, List[bytes]] = {"save": [], "restore": []}
        self.streams: List[bytes] = []
        self.commands: List[Tuple[List[str], bytes]] = []
        self.n = 0

    def _path(self, suffix: str) -> Path:
        self.n += 1
        return self.tmp / f"{self.n}.{suffix}"

    def _keep(self, mode: str, t: Transcript) -> None:
        self.frames[mode].append(t.stdout)
        replies = b"".join(_xc.encode_reply(int(v)) for _, v in t.replies
                           if isinstance(v, int))
        # As the helper target runs it: io fd 100, no back channel, the
        # template's guest (1) or restore target (2).
        argv = list(t.argv[1:])
        argv[1:4] = ["100", "-1", "1" if mode == "save" else "2"]
        self.commands.append((argv, replies))

    def helper_save(self, helper: str, kind: str, live: bool, remus: bool) -> Path:
        host = self.host
        domid = host.create_domain(1, vcpus=2 if kind == "hvm" else 1, kind=kind, dirty_pages=8)
        path = self._path("libxc")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            cbflags = CBFLAGS_SAVE_REMUS if remus else CBFLAGS_SAVE_PLAIN
            t = run_helper(helper, "save", save_args(domid, 1 if live else 0, cbflags, 1 if remus else 0),
                           io_fd=fd, env=host.env, replies=Replies(checkpoints=2), timeout=60)
        finally:
            os.close(fd)
        self._keep("save", t)
        data = path.read_bytes()
        self.streams.append(slim_libxc(data, 0))
        return path

    def helper_restore(self, helper: str, path: Path) -> None:
        host = self.host
        domid = host.create_empty_domain()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            t = run_helper(helper, "restore", restore_args(domid, cbflags=CBFLAGS_RESTORE_PLAIN),
                           io_fd=fd, env=host.env, timeout=60)
        finally:
            os.close(fd)
        self._keep("restore", t)

    def xl_file(self, helper: str, kind: str, remus: bool) -> None:
        host = self.host
        domid = host.create_domain(1, kind=kind, dirty_pages=8)
        path = self._path("xl")
        rounds = []

        class Callbacks:
            def suspend(self) -> bool:
                return True

            def postcopy(self) -> bool:
                return True

            def checkpoint(self) -> bool:
                rounds.append(1)
                return len(rounds) < 2

        config = {"c_info": {"name": f"seed-{kind}", "type": kind}, "b_info": {"max_memkb": 1024}}
        records = [xlfile.EmulatorRecord.context(b"qemu state")] if kind == "hvm" else []
        xlfile.save_domain_to_file(
            domid, path, Callbacks(), config=config, emulator_records=records,
            live=remus, stream_type=xensr.XC_STREAM_REMUS if remus else xensr.XC_STREAM_PLAIN,
            helper=helper, env=host.env)
        data = path.read_bytes()
        with xlfile.SaveFileReader.open(path) as reader:
            start = reader.libxc_offset
        self.streams.append(slim_libxc(data, start))


def _helpers() -> List[str]:
    helpers = [xensr.helper_path()]
    if DEBIAN_HELPER.is_file():
        helpers.append(str(DEBIAN_HELPER))
    return helpers


def collect(tmp: Path) -> _Runs:
    with SimulatedHost(tmp / "host", auto_suspend=True) as host:
        runs = _Runs(host, tmp)
        for helper in _helpers():
            for kind in ("pv", "hvm"):
                for live, remus in ((False, False), (True, False), (True, True)):
                    path = runs.helper_save(helper, kind, live, remus)
                    if not remus:
                        runs.helper_restore(helper, path)
                runs.xl_file(helper, kind, remus=False)
            runs.xl_file(helper, "hvm", remus=True)
        return runs


def write_corpora(out: Path, runs: _Runs) -> Dict[str, int]:
    for mode, outputs in runs.frames.items():
        for stdout in outputs:
            for prefix in CALLOUT_PREFIXES[mode]:
                _write(out / "callout", prefix + stdout)
    for data in runs.streams:
        for mode in STREAM_MODES:
            _write(out / "stream", bytes([mode]) + data)
    from fuzz.targets.helper import encode_input
    for argv, replies in runs.commands:
        for flags in (0, 1):
            _write(out / "helper", encode_input(flags, argv, replies))
    return {name: len(os.listdir(out / name)) for name in ("callout", "stream", "helper")}


def generate(out: Path) -> Dict[str, int]:
    """Write the three seed corpora under ``out``; returns their sizes."""
    tmp = Path(tempfile.mkdtemp(prefix="xensr-seeds-"))
    try:
        return write_corpora(out, collect(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "fuzz/corpus")
    for name, n in generate(out).items():
        print(f"{name}: {n} seeds in {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
