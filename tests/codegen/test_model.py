"""The generator: model checks, determinism, golden outputs, --check."""

import os
import shutil
import subprocess
import sys

import pytest

from codegen import emit_c, emit_cython, emit_py, generate
from codegen.model import Constant, ConstantGroup, Direction, Reply, Role, build_table
from codegen.table import TABLE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "codegen", "golden")

# A small table exercising every emitter path: integers of every width,
# strings, each reply kind and mapping, both directions, a struct-by-value
# callback, the roles the callout handles itself, labelled constants.
SMALL_ENTRIES = (
    ("sr", "note", [("uint32_t", "level"), ("STRING", "text")],
     {"role": "log", "doc": "d1"}),
    ("scxA", "ask", [("int", "a"), ("unsigned long", "b")],
     {"reply_map": "status", "failure_reply": -1, "default_reply": 0, "always": "s",
      "bool_args": ("b",), "undo_arg": "b"}),
    ("rcxW", "check", [("unsigned", "bits")],
     {"reply_map": "bool", "failure_reply": 0}),
    ("rcx", "results", [("xen_pfn_t", "x"), ("long", "y")], {"always": "r"}),
    ("srW", "done", [("int", "retval"), ("int", "errnoval")],
     {"role": "complete", "default_reply": 0, "failure_reply": 0}),
    ("scxW", "policy", [("unsigned", "iteration"), ("long", "dirty_count")],
     {"libxc_struct": "precopy_stats", "extension": True, "reply_map": "enum",
      "reply_group": "choice", "failure_reply": "CHOICE_NO", "struct_class": "Stats"}),
)
SMALL_GROUPS = (
    ConstantGroup("choice", "policy replies", (
        Constant("CHOICE_NO", -1), Constant("CHOICE_MAYBE", 0), Constant("CHOICE_YES", 1))),
    ConstantGroup("lvl", "levels", (
        Constant("LVL_LOW", 0, label="low"), Constant("LVL_HIGH", 1, label="high"))),
)
SMALL = build_table(SMALL_ENTRIES, SMALL_GROUPS)


def test_table_matches_xen_417():
    # docs/protocol.md §5.2 and the precopy_policy extension, in order.
    expect = [
        (1, "log", "sr"), (2, "progress", "sr"), (3, "suspend", "srcxA"),
        (4, "postcopy", "srcxA"), (5, "checkpoint", "srcxA"),
        (6, "wait_checkpoint", "srcxA"), (7, "switch_qemu_logdirty", "scxA"),
        (8, "static_data_done", "rcxW"), (9, "restore_results", "rcx"),
        (10, "complete", "srW"), (11, "precopy_policy", "scxW"),
    ]
    assert [(m.number, m.name, m.flags) for m in TABLE] == expect
    sizes = {m.name: m.fixed_size for m in TABLE}
    assert sizes["switch_qemu_logdirty"] == 10
    assert sizes["static_data_done"] == 6
    assert sizes["restore_results"] == 18
    assert sizes["complete"] == 10
    assert sizes["precopy_policy"] == 2 + 4 + 8 + 8
    assert [a.type.name for a in TABLE.by_name("precopy_policy").args] == [
        "unsigned", "unsigned long", "long"]


def test_cbflags_values_libxl_produces():
    def bits(*names):
        return sum(1 << TABLE.by_name(n).cbflag_bit for n in names)
    assert bits("suspend", "switch_qemu_logdirty") == 136
    assert bits("static_data_done", "restore_results") == 768
    assert bits("suspend", "postcopy", "checkpoint", "switch_qemu_logdirty") == 184
    assert TABLE.by_name("precopy_policy").cbflag_bit == 11
    assert TABLE.by_name("log").cbflag_bit is None


@pytest.mark.parametrize("flags,args,extra,match", [
    ("sq", [], {}, "unknown flags"),
    ("sWA", [], {}, "both W and A"),
    ("x", [], {}, "no direction"),
    ("sx", [], {}, "requires c"),
    ("s", [("float", "f")], {}, "unknown type"),
])
def test_model_rejects_bad_entries(flags, args, extra, match):
    with pytest.raises(ValueError, match=match):
        build_table([(flags, "m", args, extra)])


@pytest.mark.parametrize("flags,args,extra,match", [
    ("scW", [], {}, "needs reply_map and failure_reply"),
    ("scW", [], {"reply_map": "bool"}, "needs reply_map and failure_reply"),
    ("sc", [], {"reply_map": "bool", "failure_reply": 0}, "only requests"),
    ("scW", [], {"reply_map": "enum", "failure_reply": 0}, "reply_group"),
    ("sW", [], {"role": "notice"}, "needs default_reply"),
    ("rcx", [], {"always": "s"}, "not valid in"),
    ("sc", [], {"role": "results", "always": "s"}, "needs flag x"),
    ("scxW", [], {"reply_map": "bool", "failure_reply": 0, "always": "s"}, "default_reply"),
    ("scW", [("STRING", "s")], {"reply_map": "bool", "failure_reply": 0,
                               "bool_args": ("s",)}, "integer argument"),
    ("s", [("STRING", "s"), ("uint32_t", "level")], {"role": "log"}, "level"),
    ("scW", [], {"reply_map": "bool", "failure_reply": "NOPE"}, "unknown constant"),
    ("scW", [], {"reply_map": "enum", "reply_group": "nope", "failure_reply": 0},
     "unknown reply_group"),
])
def test_model_rejects_inconsistent_handling(flags, args, extra, match):
    with pytest.raises(ValueError, match=match):
        build_table([(flags, "m", args, extra)])


def test_handling_columns_of_the_xen_table():
    roles = {m.name: m.role for m in TABLE}
    assert roles["log"] is Role.LOG and roles["complete"] is Role.COMPLETE
    assert roles["restore_results"] is Role.RESULTS
    assert TABLE.callbacks_in(Direction.SAVE) == (
        "suspend", "postcopy", "checkpoint", "wait_checkpoint",
        "switch_qemu_logdirty", "precopy_policy", "progress")
    assert TABLE.callbacks_in(Direction.RESTORE) == (
        "suspend", "postcopy", "checkpoint", "wait_checkpoint",
        "static_data_done", "progress")
    # libxl's helper command lines: cbflags 136 when saving, 768 restoring.
    def bits(d):
        return sum(1 << m.number for m in TABLE.always_cbflags(d))
    assert bits(Direction.SAVE) == 136 and bits(Direction.RESTORE) == 768
    policy = TABLE.by_name("precopy_policy")
    assert policy.failure_reply == -1 and policy.struct_class == "PrecopyStats"
    assert TABLE.by_name("switch_qemu_logdirty").undo_arg == "enable"
    assert TABLE.by_name("log").offset_of("level") == 2
    assert TABLE.by_name("progress").offset_of("done") is None


def test_model_rejects_duplicates_and_too_many():
    with pytest.raises(ValueError, match="duplicate"):
        build_table([("s", "a", [], {}), ("r", "a", [], {})])
    with pytest.raises(ValueError, match="32 bits"):
        build_table([("s", f"m{i}", [], {}) for i in range(32)])


def test_directions_and_replies():
    save = {m.name for m in TABLE.in_direction(Direction.SAVE)}
    restore = {m.name for m in TABLE.in_direction(Direction.RESTORE)}
    assert "static_data_done" not in save and "restore_results" not in save
    assert "switch_qemu_logdirty" not in restore and "precopy_policy" not in restore
    assert TABLE.by_name("suspend").reply is Reply.ASYNC
    assert TABLE.by_name("complete").reply is Reply.SYNC
    assert TABLE.by_name("log").reply is Reply.NONE


def test_output_is_deterministic_and_carries_digest():
    first = generate()
    second = generate()
    assert first == second
    for gen in first:
        assert "DO NOT EDIT" in gen.text
        assert f"sha256:{TABLE.digest}" in gen.text


def test_digest_follows_the_table():
    changed = build_table((
        ("sr", "note", [("uint32_t", "level"), ("STRING", "txt")], {"role": "log", "doc": "d1"}),
    ) + tuple(SMALL_ENTRIES[1:]), SMALL_GROUPS)
    assert changed.digest != SMALL.digest
    reordered = build_table(tuple(reversed(SMALL_ENTRIES)), SMALL_GROUPS)
    assert reordered.digest != SMALL.digest
    assert build_table(SMALL_ENTRIES, SMALL_GROUPS).digest == SMALL.digest
    # The parent's columns are part of the digest too.
    entries = list(SMALL_ENTRIES)
    entries[2] = ("rcxW", "check", [("unsigned", "bits")],
                  {"reply_map": "bool", "failure_reply": 1})
    assert build_table(entries, SMALL_GROUPS).digest != SMALL.digest



def _small_outputs():
    out = []
    for emitter in (emit_c.emit, emit_cython.emit, emit_py.emit):
        out.extend(emitter(SMALL))
    return out


@pytest.mark.parametrize("gen", _small_outputs(), ids=lambda g: os.path.basename(g.path))
def test_golden(gen):
    path = os.path.join(GOLDEN, os.path.basename(gen.path) + ".golden")
    if os.environ.get("XENSR_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(gen.text)
    with open(path) as f:
        assert gen.text == f.read(), (
            f"{gen.path} differs from {path}; if intended, rerun with XENSR_UPDATE_GOLDEN=1")


def test_block_senders_refused():
    table = build_table([("s", "blob", [("BLOCK", "data")], {})])
    with pytest.raises(NotImplementedError, match="BLOCK"):
        emit_c.emit(table)


def _copy_tree(tmp_path):
    """A copy of the generator and its outputs, to damage safely."""
    shutil.copytree(os.path.join(ROOT, "codegen"), tmp_path / "codegen",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for gen in generate():
        dst = tmp_path / gen.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, gen.path), dst)
    return tmp_path


def _check(root):
    return subprocess.run([sys.executable, "-m", "codegen", "--check", "--root", str(root)],
                          cwd=root, capture_output=True, text=True)


def test_check_passes_on_the_tree():
    r = subprocess.run([sys.executable, "-m", "codegen", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_check_fails_after_hand_edit(tmp_path):
    root = _copy_tree(tmp_path)
    assert _check(root).returncode == 0
    target = root / "helper_c" / "xensr_msgs.c"
    target.write_text(target.read_text().replace("transmit(p);", "transmit(p); ", 1))
    r = _check(root)
    assert r.returncode == 1
    assert "helper_c/xensr_msgs.c" in r.stderr and "stale" in r.stderr


def test_check_fails_on_missing_output(tmp_path):
    root = _copy_tree(tmp_path)
    (root / "xensr" / "_msgs.pxi").unlink()
    r = _check(root)
    assert r.returncode == 1 and "xensr/_msgs.pxi: missing" in r.stderr


def test_check_fails_after_table_edit(tmp_path):
    root = _copy_tree(tmp_path)
    table = root / "codegen" / "table.py"
    text = table.read_text()
    edited = text.replace('("unsigned", "missing")', '("uint32_t", "missing")')
    assert edited != text
    table.write_text(edited)
    r = _check(root)
    assert r.returncode == 1
    # Every output carries the digest, so every one is stale.
    for gen in generate():
        assert gen.path in r.stderr
    # Regenerating makes it current again.
    subprocess.run([sys.executable, "-m", "codegen", "--root", str(root)], cwd=root,
                   check=True, capture_output=True)
    assert _check(root).returncode == 0
