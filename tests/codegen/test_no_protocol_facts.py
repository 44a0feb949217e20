"""No protocol number or layout is written by hand outside codegen/.

Scans every hand-written source of the parent, the helper, the benchmarks'
C programs and the tests' C helpers (not the generated files, not the
simulated hypervisor, whose numbers are libxc stream facts, and not the
Python test fixtures that deliberately hold bytes) for what only the
message table may say: message numbers compared with a message type,
declared as constants or named as "bit N"; cbflags masks (libxl's 136 and
768, ``1 << N`` with N a message's bit); hand-coded body offsets.
"""

import os
import re

import pytest

from codegen import generate
from codegen.model import Direction
from codegen.table import TABLE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCANNED_DIRS = {
    "xensr": (".py", ".pyx", ".pxd", ".pxi", ".pyi", ".h", ".c"),
    "helper_c": (".c", ".h"),
    os.path.join("benchmarks", "csrc"): (".c", ".h"),
    "tests": (".c", ".h"),
}
# Not the parent's or the helper's protocol: the simulated host
# (libxc stream facts) and the real-Xen tier's guest programs.
SKIPPED_DIRS = ("simhost", "realxen")

NUMBERS = {m.number for m in TABLE}
CBFLAG_BITS = {m.number for m in TABLE if m.cbflag}
MASKS = set()
for _d in Direction:
    _always = sum(1 << m.number for m in TABLE.always_cbflags(_d))
    _every = sum(1 << m.number for m in TABLE.in_direction(_d) if m.cbflag)
    MASKS |= {_always, _every}

# log_levels' bit for the levels above xentoollog's (api.py and _xc.pyx).
XTL_LEVEL_COUNT = len(TABLE.group("xtl_level").constants)

TYPE_NAMES = r"(?:t|t16|type|msgtype|msg_type|mtype|msgnum)"
RULES = [
    # (what, regex, group that must hold a protocol number, the numbers)
    ("message type compared with a number",
     re.compile(rf"\b{TYPE_NAMES}\s*(?:==|!=|<=|>=|<|>)\s*(\d+)\b"), NUMBERS),
    ("number compared with a message type",
     re.compile(rf"\b(\d+)\s*(?:==|!=)\s*{TYPE_NAMES}\b"), NUMBERS),
    ("a message number or count declared by hand",
     re.compile(r"^\s*(?:#\s*define\s+|_?)\w*MSG_\w*\s*=?\s*(\d+)\b"), None),
    ("a protocol constant declared by hand",
     re.compile(r"^\s*(?:#\s*define\s+|_?)\w*(?:CBFLAG|XGR|XGS|XC_STREAM|XTL)_\w*\s*=?\s*(-?\d+)\b"),
     None),
    ("a cbflags or log-level bit by number", re.compile(r"\b1[uU]?\s*<<\s*(\d+)\b"),
     CBFLAG_BITS | {XTL_LEVEL_COUNT}),
    ("a message's bit by number", re.compile(r"\bbits?\s+(\d+)\b"), NUMBERS),
    ("a cbflags mask by value", re.compile(r"(?<![\w.])(\d+|0x[0-9a-fA-F]+)\b"),
     MASKS),
    ("a hand-coded body offset", re.compile(r"\bbody\s*\+\s*(\d+)\b"), None),
    ("a hand-coded STRING position",
     re.compile(r"_(?:skip|read)_string\(\s*body\s*,\s*n\s*,\s*(\d+)"), None),
    ("a hand-coded trailing size", re.compile(r"\bn\s*-\s*off\s*==\s*(\d+)"), None),
]


def _generated():
    return {os.path.normpath(g.path) for g in generate()}


def hand_written_sources():
    generated = _generated()
    out = []
    for top, exts in SCANNED_DIRS.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in SKIPPED_DIRS and not d.startswith(("_", ".")))
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                if not name.endswith(exts) or rel in generated:
                    continue
                if name == "_xc.c":  # Cython's output
                    continue
                out.append(rel)
    return out


def _value(text):
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def find_protocol_facts(rel):
    hits = []
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            for what, regex, numbers in RULES:
                for m in regex.finditer(line):
                    if numbers is None or _value(m.group(1)) in numbers:
                        hits.append(f"{rel}:{lineno}: {what}: {line.strip()}")
    return hits


def test_the_scan_covers_the_hand_written_sources():
    files = hand_written_sources()
    for expected in ("xensr/_xc.pyx", "xensr/_wire.pxi", "xensr/api.py", "xensr/callbacks.py",
                     "xensr/xlfile.py", "helper_c/xensr-save-helper.c", "helper_c/frame.c",
                     "benchmarks/csrc/cparent.c", "tests/support/fakehelper/fakehelper.c"):
        assert expected in files
    for generated in ("xensr/_msgs.pxi", "xensr/_constants.py", "helper_c/xensr_msgs.c"):
        assert generated not in files
    assert not [f for f in files if "simhost" in f.split(os.sep)]


@pytest.mark.parametrize("line,caught", [
    ("        if t == 10:", True),
    ("    if (type == 3)", True),
    ("#define MSG_LOG 1", True),
    ("MSG_SLOTS = 16", True),
    ("        mask |= 1 << 10                 # levels above XTL_CRITICAL", True),
    ("_XC_STREAM_PLAIN = 0", True),
    ("_XGR_CHECKPOINT_FAILOVER = 2", True),
    ("cdef unsigned ok = (1u << 2) | (1u << 11)", True),
    ("CBFLAGS = (1 << 11) | (1 << 3)", True),
    ("static unsigned char buf[1 << 20];", False),
    ("#define CLOSE_RANGE_CLOEXEC (1U << 2)", False),
    ("        # suspend and switch_qemu_logdirty always, as libxl (136).", True),
    ("    args = ['768']", True),
    ("libxl's helper does; bit 11 (precopy_policy, save only) is an xensr", True),
    ("    memcpy(&level, body + 2, 4)", True),
    ("    off = _skip_string(body, n, 10)", True),
    ("    return off >= 0 and n - off == 16", True),
    ("        err = errnoval - (1 << 32) if errnoval >= (1 << 31) else errnoval", False),
    ("    memcpy(&level, body + LOG_LEVEL_OFFSET, 4)", False),
    ("        if role == ROLE_LOG:", False),
])
def test_the_rules_catch_what_the_issue_listed(tmp_path, line, caught, monkeypatch):
    src = tmp_path / "x.py"
    src.write_text(line + "\n")
    monkeypatch.setattr("tests.codegen.test_no_protocol_facts.ROOT", str(tmp_path))
    assert bool(find_protocol_facts("x.py")) == caught


def test_no_protocol_numbers_or_layouts_in_hand_written_files():
    hits = []
    for rel in hand_written_sources():
        hits += find_protocol_facts(rel)
    assert not hits, ("protocol facts written by hand (put them in codegen/table.py "
                      "and use the generated names):\n" + "\n".join(hits))
