"""xensr-save-helper: command line, exit statuses, linkage.

Every malformed command line must end in the usage status (64) with a
message naming the culprit on stderr, no frame on stdout and no core; a
well-formed one must get past parsing (the first frame is the DEBUG
"starting ..." log line).  These tests need only the built helper.
"""

import os
import re
import shutil
import struct
import subprocess

import pytest

from xensr import XEN_VERSION
from xensr import _constants as C

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPER = os.path.join(ROOT, "xensr", "bin", "xensr-save-helper")
EX_USAGE = 64

SAVE = ["--save-domain", "5", "-1", "7", "1", "136", "0"]
RESTORE = ["--restore-domain", "5", "-1", "7", "1", "0", "2", "0", "768", "0"]

SAVE_NAMES = ["IO_FD", "RECV_FD", "DOMID", "XCFLAGS", "CBFLAGS", "STREAM_TYPE"]
RESTORE_NAMES = [
    "IO_FD", "SEND_BACK_FD", "DOMID", "STORE_EVTCHN", "STORE_DOMID",
    "CONSOLE_EVTCHN", "CONSOLE_DOMID", "CBFLAGS", "STREAM_TYPE",
]


@pytest.fixture(scope="module")
def helper():
    assert os.access(HELPER, os.X_OK), (
        f"{HELPER} is not built: run `.venv/bin/python setup.py -q build_ext --inplace`"
    )
    return HELPER


def run(helper, argv, stdin=b""):
    return subprocess.run([helper, *argv], input=stdin, capture_output=True, timeout=30)


def with_arg(base, index, value):
    argv = list(base)
    argv[1 + index] = value
    return argv


def bad_cases():
    """(id, argv, what the message must mention)."""
    cases = [
        ("no-mode", [], "no mode"),
        ("unknown-mode", ["--frobnicate-domain", "1"], "unknown mode '--frobnicate-domain'"),
        ("mode-case", ["--SAVE-DOMAIN", *SAVE[1:]], "unknown mode"),
        ("empty-mode", [""], "unknown mode ''"),
        ("save-no-args", ["--save-domain"], "takes 6 arguments, not 0"),
        ("save-missing", SAVE[:-1], "takes 6 arguments, not 5"),
        ("save-extra", [*SAVE, "0"], "takes 6 arguments, not 7"),
        ("restore-missing", RESTORE[:-1], "takes 9 arguments, not 8"),
        ("restore-extra", [*RESTORE, "1"], "takes 9 arguments, not 10"),
        ("restore-with-save-count", ["--restore-domain", *SAVE[1:]], "takes 9 arguments, not 6"),
        ("help-with-args", ["--help", "x"], "unknown mode '--help'"),
        ("version-with-args", ["--version", "x"], "unknown mode '--version'"),
    ]
    # Every argument slot of both modes, with values its C type or meaning
    # cannot take.
    junk = [
        ("empty", ""),
        ("letters", "abc"),
        ("trailing-junk", "12x"),
        ("trailing-space", "12 "),
        ("leading-space", " 12"),
        ("plus", "+12"),
        ("hex", "0x10"),
        ("exponent", "1e3"),
        ("decimal-point", "1.0"),
        ("ulong-overflow", "18446744073709551616"),
        ("huge", "9" * 40),
        ("minus-two", "-2"),
    ]
    for mode, base, names in (("save", SAVE, SAVE_NAMES), ("restore", RESTORE, RESTORE_NAMES)):
        for i, name in enumerate(names):
            for jid, value in junk:
                cases.append((f"{mode}-{name}-{jid}", with_arg(base, i, value), name))
            if name in ("RECV_FD", "SEND_BACK_FD"):
                # -1 is "none"; nothing else negative, not 0-2 (the pipes).
                for v in ("-01", "-0", "0", "1", "2", "2147483648"):
                    cases.append((f"{mode}-{name}-{v}", with_arg(base, i, v), name))
            elif name == "IO_FD":
                for v in ("-1", "0", "1", "2", "2147483648"):
                    cases.append((f"{mode}-{name}-{v}", with_arg(base, i, v), name))
            elif name in ("STORE_DOMID", "CONSOLE_DOMID"):
                for v in ("-1", "65536", "4294967295"):
                    cases.append((f"{mode}-{name}-{v}", with_arg(base, i, v), name))
            elif name == "STREAM_TYPE":
                for v in ("-1", "3", "4294967296"):
                    cases.append((f"{mode}-{name}-{v}", with_arg(base, i, v), name))
            else:
                for v in ("-1", "4294967296"):
                    cases.append((f"{mode}-{name}-{v}", with_arg(base, i, v), name))
    return cases


BAD = bad_cases()


@pytest.mark.parametrize("argv,mention", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_argv_is_a_usage_error(helper, argv, mention):
    r = run(helper, argv)
    assert r.returncode == EX_USAGE, (r.returncode, r.stderr)
    assert r.stdout == b"", "a usage error must not write frames"
    err = r.stderr.decode()
    assert err.startswith("xensr-save-helper: ")
    assert mention in err.splitlines()[0], err
    assert "usage: xensr-save-helper --save-domain IO_FD RECV_FD DOMID" in err
    assert "64 usage" in err


def first_frame(data):
    assert len(data) >= 2, "no frame on stdout"
    (n,) = struct.unpack_from("=H", data)
    body = data[2: 2 + n]
    assert len(body) == n
    mtype, level, errnoval = struct.unpack_from("=HII", body)
    off = 10
    strings = []
    for _ in range(2):
        (ln,) = struct.unpack_from("=I", body, off)
        strings.append(body[off + 4: off + 4 + ln])
        off += 4 + ln
    assert off == n
    return mtype, level, errnoval, strings


GOOD = [
    ("save", SAVE),
    ("save-edge-values", ["--save-domain", "2147483647", "-1", "4294967295", "4294967295", "4294967295", "2"]),
    ("save-leading-zeros", ["--save-domain", "005", "0003", "07", "01", "0136", "00"]),
    ("save-recv-fd-3", ["--save-domain", "5", "3", "7", "0", "0", "1"]),
    ("restore", RESTORE),
    ("restore-edge-values", ["--restore-domain", "5", "2147483647", "4294967295", "4294967295",
                             "65535", "4294967295", "65535", "4294967295", "2"]),
]


@pytest.mark.parametrize("argv", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_argv_gets_past_parsing(helper, argv):
    # One zero reply is enough for `complete` if the interface opens (the
    # simulated host's libraries on LD_LIBRARY_PATH); with the host's libraries and no
    # hypervisor, xc_interface_open fails and the status is 255.
    r = run(helper, argv, stdin=struct.pack("=i", 0))
    assert r.returncode not in (EX_USAGE,) and r.returncode >= 0, r.stderr
    assert b"usage:" not in r.stderr
    mtype, level, errnoval, (context, text) = first_frame(r.stdout)
    op = "save" if argv[0] == "--save-domain" else "restore"
    assert (mtype, level, errnoval) == (C.MSG_LOG, C.XTL_DEBUG, 0)
    assert context == b"libxl-save-helper\0"
    version = package_version()
    assert text == f"starting {op} (xensr {version}, table {C.TABLE_DIGEST[:16]})\0".encode()


def package_version():
    with open(os.path.join(ROOT, "xensr", "__init__.py")) as f:
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
    return m.group(1)


def test_help_goes_to_stdout_with_status_0(helper):
    r = run(helper, ["--help"])
    assert r.returncode == 0
    out = r.stdout.decode()
    assert out.startswith("usage: xensr-save-helper --save-domain")
    assert "--restore-domain IO_FD SEND_BACK_FD DOMID STORE_EVTCHN STORE_DOMID" in out
    for status in ("0 completed", "64 usage", "254 end of stdin", "255 failure"):
        assert status in out
    assert f"libxl-save-helper of Xen {XEN_VERSION}, the release it is built for" in out
    assert r.stderr == b""


def test_version_names_package_version_and_table_digest(helper):
    r = run(helper, ["--version"])
    assert r.returncode == 0
    assert r.stdout.decode() == (
        f"xensr-save-helper {package_version()} (message table sha256:{C.TABLE_DIGEST})\n"
    )


def test_readelf_needed_is_exactly_xen_libs_and_libc(helper):
    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils) is needed"
    out = subprocess.run([readelf, "-d", helper], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    assert sorted(needed) == sorted(
        [f"libxenctrl.so.{XEN_VERSION}", f"libxenguest.so.{XEN_VERSION}",
         "libxentoollog.so.1", "libc.so.6"]
    ), needed
