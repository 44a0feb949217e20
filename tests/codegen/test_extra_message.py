"""Adding a message means editing the table and nothing else.

A fixture table, xensr's own plus one message, is generated; its C stubs
are built into the test driver (with the hand-written helper_c/frame.c)
and its .pxi and constants into a copy of the callout built from the
hand-written xensr/_xc.pyx, _wire.pxi, _libc.pxd, _spawn.* as they are.
The callout then spawns the driver, which sends the new message; the
callout decodes it, presents its arguments, maps the callback's return
to a reply as the table says, and the driver reads the replies back.
"""

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from codegen import emit_c, emit_cython, emit_py
from codegen.model import build_table
from codegen.table import ENTRIES, GROUPS

from . import driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXTRA = ("srcW", "ping",
         [("uint32_t", "seq"), ("STRING", "note"), ("long", "delta"), ("unsigned", "flag")],
         {"reply_map": "bool", "failure_reply": 0, "bool_args": ("flag",),
          "extension": True, "doc": "A message only this test's table has."})
TABLE_X = build_table(tuple(ENTRIES) + (EXTRA,), GROUPS)
PING = TABLE_X.by_name("ping")

# The hand-written sources the fixture callout is built from, unchanged.
CALLOUT_SOURCES = ("_xc.pyx", "_xc.pxd", "_wire.pxi", "_libc.pxd", "_spawn.pxd", "_spawn.h", "errors.py")


def _digest(paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _hand_written():
    return [os.path.join(ROOT, "xensr", n) for n in CALLOUT_SOURCES] + [
        os.path.join(ROOT, "helper_c", "frame.c")]


@pytest.fixture(scope="module")
def fixture_xc(tmp_path_factory):
    """xensr's callout built against the fixture table's generated code."""
    before = _digest(_hand_written())
    root = tmp_path_factory.mktemp("fixturexc")
    pkg = root / "fixturexc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in CALLOUT_SOURCES:
        shutil.copy(os.path.join(ROOT, "xensr", name), pkg / name)
    for gen in emit_cython.emit(TABLE_X) + emit_py.emit(TABLE_X):
        (pkg / os.path.basename(gen.path)).write_text(gen.text)
    build = textwrap.dedent("""
        from setuptools import Extension, setup
        from Cython.Build import cythonize
        ext = Extension("fixturexc._xc", ["fixturexc/_xc.pyx"], include_dirs=["fixturexc"],
                        extra_compile_args=["-Wno-unused-function"])
        setup(name="fixturexc", script_args=["-q", "build_ext", "--inplace"],
              ext_modules=cythonize([ext], language_level=3, quiet=True))
    """)
    r = subprocess.run([sys.executable, "-c", build], cwd=root, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    sys.path.insert(0, str(root))
    try:
        xc = importlib.import_module("fixturexc._xc")
        consts = importlib.import_module("fixturexc._constants")
    finally:
        sys.path.remove(str(root))
    assert _digest(_hand_written()) == before
    return xc, consts


@pytest.fixture(scope="module")
def fixture_driver(tmp_path_factory):
    return driver.build(TABLE_X, str(tmp_path_factory.mktemp("drvx")), "")


class Handler:
    def __init__(self):
        self.logs = []
        self.results = []

    def msg_log(self, *args):
        self.logs.append(args)

    def direct_result(self, msgtype, value):
        self.results.append((msgtype, value))
        return None

    def direct_failed(self, msgtype, exc):
        raise AssertionError(f"callback {msgtype} raised {exc!r}")


def test_the_extra_message_is_numbered_last_and_in_every_output():
    assert PING.number == len(ENTRIES) + 1
    texts = {g.path: g.text for g in emit_c.emit(TABLE_X) + emit_cython.emit(TABLE_X)
             + emit_py.emit(TABLE_X)}
    assert f"XENSR_MSG_PING = {PING.number}" in texts[emit_c.HEADER_PATH]
    assert "int xensr_send_ping(uint32_t seq, const char *note, long delta, unsigned flag)" \
        in texts[emit_c.SOURCE_PATH]
    assert f"MSG_PING = {PING.number}" in texts[emit_cython.PATH]
    assert f"MSG_PING = {PING.number}" in texts[emit_py.PATH]


def test_the_extra_message_round_trips_through_the_callout(fixture_xc, fixture_driver,
                                                          tmp_path):
    xc, consts = fixture_xc
    # The Python maps come from the table too.
    assert consts.MESSAGES_BY_NAME["ping"].number == PING.number
    assert consts.CALLBACKS_SAVE[-2:] == ("ping", "progress")
    assert consts.REPLY_MAP["ping"] == "bool" and consts.FAILURE_REPLY["ping"] == 0
    assert xc.reply_kind(PING.number) == 1
    assert xc.map_reply(PING.number, True) == 1 and xc.map_reply(PING.number, 2) == 2
    with pytest.raises(TypeError, match="ping"):
        xc.map_reply(PING.number, "yes")

    script = tmp_path / "script"
    report = tmp_path / "report"
    script.write_text(
        f"ping 1 {b'hello'.hex()} -5 1\n"
        "ping 4294967295 - 9223372036854775807 0\n"
        f"log 8 2 {b'ctx'.hex()} {b'after the pings'.hex()}\n"
        "complete 0 0\n")
    got = []
    replies = iter([True, 0])

    def ping(*args):
        got.append(args)
        return next(replies)

    co = xc.Callout(xc.DIR_SAVE, 0)
    co.set_direct(PING.number, ping)
    h = Handler()
    iofd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        env = [b"DRIVER_SCRIPT=" + os.fsencode(script), b"DRIVER_REPORT=" + os.fsencode(report)]
        co.spawn(fixture_driver, "--save-domain", iofd, -1, [], env)
        while co.serve(h, time.monotonic() + 30) != 1:
            pass
        assert co.poll_exit() and co.returncode == 0
    finally:
        co.close()
        os.close(iofd)
    assert got == [(1, "hello", -5, True), (4294967295, "", 2**63 - 1, False)]
    assert [type(a[3]) for a in got] == [bool, bool]
    assert h.results == [] and h.logs == [(8, 2, "ctx", "after the pings")]
    assert co.completed and co.type_counts[PING.number] == 2
    # Replies as the table maps them; complete gets its default reply.
    assert report.read_text().splitlines() == [
        "reply ping 1", "reply ping 0", "reply complete 0"]


def test_the_extra_message_gets_its_failure_reply_once_callbacks_stop(
        fixture_xc, fixture_driver, tmp_path):
    xc, _ = fixture_xc
    script = tmp_path / "script"
    report = tmp_path / "report"
    script.write_text("ping 7 - 0 1\ncomplete 0 0\n")
    co = xc.Callout(xc.DIR_SAVE, 0)
    co.set_direct(PING.number, lambda *a: pytest.fail("called after stop"))
    co.stop_callbacks()
    iofd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        env = [b"DRIVER_SCRIPT=" + os.fsencode(script), b"DRIVER_REPORT=" + os.fsencode(report)]
        co.spawn(fixture_driver, "--save-domain", iofd, -1, [], env)
        while co.serve(Handler(), time.monotonic() + 30) != 1:
            pass
        assert co.poll_exit() and co.returncode == 0
    finally:
        co.close()
        os.close(iofd)
    assert report.read_text().splitlines() == [
        f"reply ping {PING.failure_reply}", "reply complete 0"]
