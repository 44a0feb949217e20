"""Shared pytest fixtures (tests/conftest.py imports them all)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xensr import XEN_VERSION
from xensr.testing import (  # noqa: F401
    SimulatedHost, simhost_available, simhost_lib_dir,
)

__all__ = [
    "ROOT", "XEN_RELEASE", "DEBIAN_ROOT", "DEBIAN_BIN", "simulated_host", "simhost_libs", "debian_helper",
    "verify_stream", "run_verify_stream", "fake", "iofd", "counts", "valgrind_output",
]

ROOT = Path(__file__).resolve().parents[2]
#: The Xen release xensr is built for; Debian's tools of the same release
#: are the ones the compatibility tests run.
XEN_RELEASE = XEN_VERSION or "4.17"
_UNPACKED = ROOT / ".cache" / "debian" / "root"


def _debian_root() -> Path:
    """Where Debian's xen-utils-<release> is: unpacked by ./bootstrap deps
    (.cache/debian/root), else installed on this machine (a Debian root in
    which the suite runs)."""
    tools = Path("usr") / "lib" / f"xen-{XEN_RELEASE}" / "bin"
    if not (_UNPACKED / tools).is_dir() and (Path("/") / tools / "libxl-save-helper").is_file():
        return Path("/")
    return _UNPACKED


DEBIAN_ROOT = _debian_root()
DEBIAN_BIN = DEBIAN_ROOT / "usr" / "lib" / f"xen-{XEN_RELEASE}" / "bin"


# Valgrind 3.24 (Debian 13) tries every mapped file as an ELF image and says
# so when it is not one: the simulated domains' memory files.  A notice,
# not an error (the exit code stays 0).
_VALGRIND_NOT_AN_IMAGE = re.compile(
    rb"==\d+== warning: connection to image \S+ failed\n==\d+== +cannot read program headers *\n")


def valgrind_output(stderr: bytes) -> bytes:
    """What valgrind said, without its notices about mapped data files."""
    return _VALGRIND_NOT_AN_IMAGE.sub(b"", stderr)


@pytest.fixture
def simulated_host(tmp_path):
    """xensr.testing's fixture, but guests suspend by themselves when the
    suspend request is answered (auto_suspend): xensr's tests answer it
    without suspending anything, to test xensr, not a toolstack."""
    with SimulatedHost(tmp_path / "simhost", auto_suspend=True) as host:
        yield host


@pytest.fixture(scope="session")
def simhost_libs() -> Path:
    """The simulated host's library directory; fails (not skips) when it is
    not built."""
    if not simhost_available():
        pytest.fail(f"the simulated host is not built in {simhost_lib_dir()}: run "
                    "`python setup.py build_ext --inplace`")
    return simhost_lib_dir()


@pytest.fixture(scope="session")
def debian_helper(simhost_libs) -> Path:
    """Debian's unmodified libxl-save-helper (skips if not unpacked)."""
    helper = DEBIAN_BIN / "libxl-save-helper"
    if not helper.is_file():
        pytest.skip(f"Debian's xen-utils-{XEN_RELEASE} is not unpacked at {DEBIAN_ROOT} "
                    "(run ./bootstrap deps)")
    return helper


def run_verify_stream(path: os.PathLike, fmt: str = "libxc") -> subprocess.CompletedProcess:
    """Run Debian's verify-stream-v2 on a file with the host's python3."""
    script = DEBIAN_BIN / "verify-stream-v2"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(DEBIAN_ROOT / "usr" / "lib" / f"xen-{XEN_RELEASE}" / "lib" / "python")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return subprocess.run([python, str(script), "-v", "-f", fmt, "-i", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="session")
def verify_stream():
    """verify(path, fmt="libxc") -> CompletedProcess (skips without Debian)."""
    if not (DEBIAN_BIN / "verify-stream-v2").is_file():
        pytest.skip(f"Debian's xen-utils-{XEN_RELEASE} is not unpacked at {DEBIAN_ROOT}")
    return run_verify_stream


@pytest.fixture(scope="session")
def fake(tmp_path_factory):
    """The fake helper of tests/support/fakehelper, built once per session."""
    from tests.support import fakehelper as fh

    d = tmp_path_factory.mktemp("fakehelper")
    return fh.Fake(fh.build(d), d)


@pytest.fixture
def iofd(tmp_path):
    """A close-on-exec read/write fd on a fresh file, for the io stream."""
    fd = os.open(tmp_path / "stream", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    yield fd
    os.close(fd)


@pytest.fixture
def counts():
    """Asserts that the test leaves no fd and no child behind."""
    from tests.support import fakehelper as fh

    fds, kids = fh.open_fds(), fh.children()
    yield
    assert fh.open_fds() == fds
    assert fh.children() == kids
