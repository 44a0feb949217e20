"""Every finding of the fuzz targets, replayed.

Each case is an input that made a target fail (found by ``python -m
fuzz``), written here readably with the encoders the targets' seeds use,
and replayed through the target itself (libFuzzer runs a file given on
its command line once), so that it checks exactly what the fuzzer did.
A finding is fixed when its case passes; none is expected to fail.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import pytest

from tests.support import fakehelper as fh
from xensr import _constants as C

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[2]


class Case(NamedTuple):
    id: str
    target: str
    data: bytes
    what: str


def callout(control: List[int], *frames: bytes) -> bytes:
    """A callout target input: 8 control bytes, then the helper's stdout."""
    return bytes(control) + b"".join(frames)


def helper(argv: List[str], replies: int = 8) -> bytes:
    """A helper target input, on the simulated host, with ``replies`` 1s."""
    from fuzz.targets.helper import encode_input

    return encode_input(1, argv, struct.pack("=i", 1) * replies)


# Control bytes (fuzz.targets.callout._Control): save, EOF at the end, all
# log levels decoded, the stdout fed in one chunk.
SAVE_PLAIN = [0, 0, 0, 0, 0xFF, 15, 0, 0]
# The same with suspend() returning 1 << 40 (ANSWERS[8], pick 9 in the
# first callback's four bits).
SAVE_SUSPEND_HUGE = [0, 0x09, 0, 0, 0xFF, 15, 0, 0]

CASES = [
    Case("callout-log-errno-above-int-max", "callout", callout(
        SAVE_PLAIN,
        fh.log(C.XTL_ERROR, 0xFFFFFFEA, b"xc", b"save failed"),
        fh.complete(-1, 22)),
        "a log frame whose errno is -EINVAL as u32: log_tail (and the error's "
        "log tail) raised OverflowError from format_log_line"),
    Case("callout-suspend-answer-outside-c-int", "callout", callout(
        SAVE_SUSPEND_HUGE,
        fh.log(C.XTL_DEBUG, 0, b"libxl-save-helper", b"starting save"),
        fh.SUSPEND,
        fh.complete(0, 0)),
        "suspend() returned 1 << 40: OverflowError from the reply encoder "
        "escaped feed() instead of the operation failing with CallbackError"),
    Case("helper-save-without-suspend", "helper",
         helper(["--save-domain", "100", "-1", "1", "0", "0", "0"]),
         "CBFLAGS without suspend: libxenguest's assertion killed the helper "
         "(SIGABRT)"),
    Case("helper-remus-save-without-checkpoint", "helper",
         helper(["--save-domain", "100", "-1", "1", "0", "136", "1"]),
         "a Remus save without checkpoint/postcopy: SIGABRT"),
    Case("helper-colo-save-without-wait-checkpoint", "helper",
         helper(["--save-domain", "100", "-1", "1", "0", "184", "2"]),
         "a COLO save without wait_checkpoint: SIGABRT"),
    Case("helper-remus-restore-without-checkpoint", "helper",
         helper(["--restore-domain", "100", "-1", "2", "1", "0", "2", "0", "768", "1"]),
         "a Remus restore without checkpoint: SIGABRT"),
    Case("helper-colo-restore-without-its-callbacks", "helper",
         helper(["--restore-domain", "100", "-1", "2", "1", "0", "2", "0", "800", "2"]),
         "a COLO restore without suspend/postcopy/wait_checkpoint: SIGABRT"),
]


def replay(target: str, path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XENSR_FUZZ_KNOWN", None)
    return subprocess.run([sys.executable, "-m", f"fuzz.targets.{target}", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          errors="replace", timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fuzz_finding_stays_fixed(case, tmp_path, simhost_libs):
    path = tmp_path / case.id
    path.write_bytes(case.data)
    r = replay(case.target, path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{case.what}\n{out[-3000:]}"
    assert f"Executed {path}" in out, out[-3000:]


def test_a_failing_input_fails_its_replay(tmp_path):
    """The replay really checks: an input whose run breaks the target's
    promise makes it exit non-zero, naming the finding.  (A target that
    raises on every input stands in for a defect.)"""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    path = tmp_path / "input"
    path.write_bytes(b"x")
    code = ("from fuzz.targets import run\n"
            "def one(data):\n    raise OverflowError('found')\n"
            "run(one)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, errors="replace", timeout=300)
    assert r.returncode != 0
    assert "xensr-fuzz signature: OverflowError in " in r.stderr


@pytest.mark.parametrize("status,out,err,signature", [
    (-6, b"", b"xensr-save-helper: save.c:1: f: Assertion `x' failed.\n",
     "helper killed by signal 6: save.c:1: f: Assertion `x' failed."),
    (3, b"", b"", "helper exit status 3 undocumented"),
    (64, b"\x02\x00\x01\x00", b"usage", "helper wrote to stdout before a usage error"),
])
def test_the_helper_target_names_each_broken_promise(status, out, err, signature):
    from fuzz.targets import Finding
    from fuzz.targets.helper import check_outcome

    with pytest.raises(Finding) as info:
        check_outcome([b"--save-domain"], b"", status, out, err)
    assert info.value.signature == signature


@pytest.mark.parametrize("status", [0, 64, 254, 255])
def test_the_helper_target_accepts_the_documented_statuses(status):
    from fuzz.targets.helper import check_outcome

    check_outcome([b"--save-domain"], b"", status, b"", b"")
