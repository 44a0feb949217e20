"""``xensr inspect``: in-process through main(argv), and as ``python -m xensr``."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stream.gen import (
    END,
    HVM_CONTEXT,
    PAGE,
    PAGE_DATA,
    STATIC_DATA_END,
    dhdr,
    hvm_context,
    ihdr,
    make,
    rec,
)
from xensr.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(err: str, path, offset=None):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"xensr: inspect: {path}: ")
    if offset is not None:
        assert f": offset {offset}: " in lines[0], lines[0]


@pytest.fixture
def xl_file(tmp_path):
    g = make("xl", hvm=True, vcpus=3, xenstore=True)
    p = tmp_path / "guest.xl"
    p.write_bytes(g.data)
    return p, g


def test_text_report(capsys, xl_file):
    p, g = xl_file
    rc, out, err = run(capsys, "inspect", str(p))
    assert (rc, err) == (0, "")
    assert out.startswith(f"{p}: xl save file, ")
    assert "valid, ends with END" in out
    assert "mandatory flags     0x3 (JSON, STREAMv2)" in out
    assert 'JSON, domain name "guest"' in out
    assert "EMULATOR_XENSTORE_DATA" in out and "qemu-upstream" in out
    assert "x86 HVM, page size 4096, from Xen 4.17" in out
    assert f"pages                 {g.pages} in " in out
    assert f"{len(g.distinct)} distinct pfns" in out
    assert "vCPUs                 3 (from HVM_CONTEXT)" in out
    page_line = next(line for line in out.splitlines() if line.strip().startswith("PAGE_DATA"))
    assert page_line.split()[1:] == [str(g.libxc_counts[PAGE_DATA]), str(g.libxc_bytes[PAGE_DATA])]


def test_json_report(capsys, xl_file):
    p, g = xl_file
    rc, out, err = run(capsys, "inspect", "--json", str(p))
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    assert doc["valid"] is True and doc["format"] == "xl" and doc["size"] == len(g.data)
    assert doc["xl_header"]["config_format"] == "json"
    assert doc["xl_header"]["domain_name"] == "guest"
    assert [r["name"] for r in doc["libxl"]["records"]] == [
        "LIBXC_CONTEXT", "EMULATOR_XENSTORE_DATA", "EMULATOR_CONTEXT", "END"]
    assert doc["libxc"]["domain_type"] == "x86 HVM"
    assert doc["libxc"]["version"] == 3 and doc["libxc"]["page_size"] == 4096
    assert doc["libxc"]["xen_version"] == "4.17"
    assert doc["libxc"]["by_type"]["PAGE_DATA"]["count"] == g.libxc_counts[PAGE_DATA]
    assert doc["pages"]["total"] == g.pages
    assert doc["pages"]["distinct_pfns"] == len(g.distinct)
    assert doc["vcpus"]["count"] == 3
    assert doc["checkpoints"]["count"] == 0


@pytest.mark.parametrize("fmt", ["libxl", "libxc"])
def test_bare_streams_are_detected(capsys, tmp_path, fmt):
    g = make(fmt, hvm=False, checkpoints=2)
    p = tmp_path / "s"
    p.write_bytes(g.data)
    rc, out, err = run(capsys, "inspect", "--json", str(p))
    assert rc == 0
    doc = json.loads(out)
    assert doc["format"] == fmt and "xl_header" not in doc
    assert doc["ended"] == "checkpoint" and doc["checkpoints"]["count"] == 2
    assert doc["vcpus"]["ids"] == [0, 1]


def test_bad_file_one_line_and_exit_1(capsys, xl_file, tmp_path):
    p, g = xl_file
    bad = tmp_path / "bad.xl"
    data = bytearray(g.data)
    data[36] = 0xFF  # unknown mandatory flags
    bad.write_bytes(bytes(data))
    rc, out, err = run(capsys, "inspect", str(bad))
    assert rc == 1 and out == ""
    assert_one_line_error(err, bad, 36)
    assert "unknown mandatory flags" in err
    rc, out, err = run(capsys, "inspect", "--json", str(bad))
    assert rc == 1
    assert_one_line_error(err, bad, 36)
    doc = json.loads(out)
    assert doc["valid"] is False and doc["error"]["offset"] == 36


def test_truncated_at_every_boundary(capsys, tmp_path):
    g = make("xl", hvm=False, checkpoints=0, npages=20, batch=8)
    p = tmp_path / "cut.xl"
    for cut in g.boundaries[:-1] + [b + 3 for b in g.boundaries[:-1]]:
        p.write_bytes(g.data[:cut])
        rc, out, err = run(capsys, "inspect", str(p))
        assert rc == 1, cut
        assert_one_line_error(err, p, cut)


def test_flipped_header_bytes(capsys, xl_file, tmp_path):
    p, g = xl_file
    q = tmp_path / "flip.xl"
    for i, expect in [(0, 0), (5, 5), (33, 32), (38, 36), (g.header_len - 8, g.header_len - 8),
                      (g.libxc_offset + 13, g.libxc_offset + 12), (g.libxc_offset + 28, g.libxc_offset + 28)]:
        data = bytearray(g.data)
        data[i] ^= 0xFF
        q.write_bytes(bytes(data))
        rc, out, err = run(capsys, "inspect", str(q))
        assert rc == 1, i
        assert_one_line_error(err, q, expect)


def test_not_a_stream_and_unreadable(capsys, tmp_path):
    p = tmp_path / "text"
    p.write_text("hello\n")
    rc, out, err = run(capsys, "inspect", str(p))
    assert rc == 1
    assert_one_line_error(err, p, 0)
    assert "unknown magic" in err
    missing = tmp_path / "missing"
    rc, out, err = run(capsys, "inspect", str(missing))
    assert rc == 1
    assert_one_line_error(err, missing)
    assert "No such file or directory" in err
    rc, out, err = run(capsys, "inspect", str(tmp_path))
    assert rc == 1
    assert_one_line_error(err, tmp_path)


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_json_on_an_unreadable_path_prints_an_error_document(capsys, tmp_path, what):
    path = tmp_path / "missing" if what == "missing" else tmp_path
    rc, out, err = run(capsys, "inspect", "--json", str(path))
    assert rc == 1
    assert_one_line_error(err, path)
    doc = json.loads(out)
    assert doc["file"] == str(path) and doc["valid"] is False
    assert doc["error"]["offset"] is None and doc["error"]["reason"] == "unreadable"
    assert doc["error"]["errno"] == (errno.ENOENT if what == "missing" else errno.EISDIR)
    assert doc["error"]["message"] in err


def test_forced_format(capsys, xl_file):
    p, g = xl_file
    rc, out, err = run(capsys, "inspect", "--format", "libxc", str(p))
    assert rc == 1
    assert_one_line_error(err, p, 0)
    assert "bad libxc image marker" in err


@pytest.mark.parametrize(
    "argv, code",
    [
        ([], 2),
        (["inspect"], 2),
        (["inspect", "--bogus", "x"], 2),
        (["inspect", "--format", "tar", "x"], 2),
        (["frobnicate"], 2),
        (["--help"], 0),
        (["inspect", "--help"], 0),
        (["--version"], 0),
    ],
)
def test_usage(capsys, argv, code):
    rc, out, err = run(capsys, *argv)
    assert rc == code
    assert "Traceback" not in out + err
    if code == 2:
        assert "usage: xensr" in err


def test_subcommand_registry_is_lazy_and_extensible(monkeypatch, capsys, tmp_path):
    mod = tmp_path / "xensr_test_cmd.py"
    mod.write_text(
        "HELP = 'say hi'\n"
        "def add_arguments(p):\n    p.add_argument('--name', default='world')\n"
        "def run(args):\n    print('hi', args.name)\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUBCOMMANDS, "hello", "xensr_test_cmd")
    rc, out, err = run(capsys, "hello", "--name", "xen")
    assert (rc, out) == (3, "hi xen\n")
    rc, out, err = run(capsys, "--help")
    assert "hello" in out and "say hi" in out and "inspect" in out


# --------------------------------------------------------------------------
# As a program


def python_m(*args, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "xensr", *args], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


def test_python_m_xensr_inspect(xl_file, tmp_path):
    p, g = xl_file
    res = python_m("inspect", str(p))
    assert res.returncode == 0, res.stderr
    assert "valid, ends with END" in res.stdout
    cut = tmp_path / "cut.xl"
    cut.write_bytes(g.data[: g.libxc_offset + 100])
    res = python_m("inspect", str(cut))
    assert res.returncode == 1
    assert res.stdout == ""
    assert_one_line_error(res.stderr, cut, g.libxc_offset + 100)
    res = python_m()
    assert res.returncode == 2 and "usage: xensr" in res.stderr


def test_python_m_xensr_inspect_reads_standard_input(xl_file):
    p, g = xl_file
    with open(p, "rb") as f:
        res = python_m("inspect", "--json", "-", stdin=f)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["pages"]["total"] == g.pages and doc["file"] == "-"


def test_inspect_a_stream_the_rig_saved_through_debian_helper(tmp_path, simulated_host, debian_helper):
    """A libxc stream written by xc_domain_save (the simulated host) via Debian's
    unmodified libxl-save-helper, as a bare stream and wrapped by xlfile."""
    from tests.support.simhost import assert_completed, save_to_file
    from xensr import xlfile

    host = simulated_host
    dom = host.create_domain(4, vcpus=3, kind="hvm", dirty_pages=16)
    raw = tmp_path / "raw.libxc"
    t, data = save_to_file(debian_helper, host, dom, raw, live=True)
    assert_completed(t)
    res = python_m("inspect", "--json", str(raw))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["format"] == "libxc" and doc["libxc"]["domain_type"] == "x86 HVM"
    assert doc["vcpus"]["count"] == 3
    assert doc["pages"]["distinct_pfns"] == host.domain_state(dom)["nr_pages"]
    wrapped = tmp_path / "wrapped.xl"
    wrapped.write_bytes(xlfile.preamble_bytes({"c_info": {"name": "guest"}}) + data + xlfile.trailer_bytes())
    res = python_m("inspect", "--json", str(wrapped))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pages"] == doc["pages"]


# --------------------------------------------------------------------------
# Memory: the file is streamed


def write_big_stream(path: Path, gib: int) -> int:
    """A sparse HVM libxc stream of ``gib`` GiB: PAGE_DATA records of 1024
    pages whose contents are holes.  Returns the number of pages."""
    per = 1024
    nrec = gib * 1024 * 1024 * 1024 // (per * PAGE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        off = 0

        def put(b: bytes) -> None:
            nonlocal off
            os.pwrite(fd, b, off)
            off += len(b)

        put(ihdr() + dhdr(2) + rec(STATIC_DATA_END))
        for i in range(nrec):
            body_len = 8 + 8 * per + PAGE * per
            base = i * per
            put(struct.pack("<IIII", PAGE_DATA, body_len, per, 0))
            put(struct.pack(f"<{per}Q", *range(base, base + per)))
            off += PAGE * per  # a hole
        put(rec(HVM_CONTEXT, hvm_context(4)) + rec(END))
    finally:
        os.close(fd)
    return nrec * per


# Peak RSS of this process image.  (getrusage's ru_maxrss would carry over
# the forking parent's peak across exec; VmHWM belongs to the new mm.)
MEASURE = (
    "import sys\n"
    "from xensr.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "print('MAXRSS', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def measured(cmd_prefix, args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd_prefix + [sys.executable, "-c", MEASURE, *args], capture_output=True,
                         text=True, env=env, timeout=600, **kw)
    line = [x for x in res.stderr.splitlines() if x.startswith("MAXRSS")]
    assert line, res.stderr
    return res, int(line[0].split()[1]) // 1024  # MiB


def test_inspect_streams_a_4_gib_file_in_little_memory(tmp_path):
    p = tmp_path / "big.libxc"
    pages = write_big_stream(p, 4)
    try:
        assert p.stat().st_size > 4 << 30
        res, rss_mib = measured([], ["inspect", "--json", str(p)])
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["pages"]["total"] == doc["pages"]["distinct_pfns"] == pages
        assert doc["vcpus"]["count"] == 4
        _, base_mib = measured([], ["--version"])
        assert rss_mib - base_mib < 24, (rss_mib, base_mib)
        assert rss_mib < 64
    finally:
        p.unlink()


def test_inspect_streams_1_gib_through_a_pipe_in_little_memory(tmp_path):
    p = tmp_path / "big.libxc"
    pages = write_big_stream(p, 1)
    try:
        with open(p, "rb") as f:
            cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
            try:
                res, rss_mib = measured([], ["inspect", "--json", "-"], stdin=cat.stdout)
            finally:
                cat.stdout.close()
                cat.wait()
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["pages"]["total"] == pages
        assert rss_mib < 64
    finally:
        p.unlink()
