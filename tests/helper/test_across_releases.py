"""Streams across Xen releases, with Debian's own helpers on each side:
Debian 12's libxl-save-helper 4.17 on this host, Debian 13's 4.20 run from
the Debian 13 root that ./bootstrap makes (.cache/debian13/root) through
that root's own loader (it needs glibc 2.38), each on the simulated host
of its release, both on one state directory.

Old to new is what the stream specification promises (a receiver accepts
its own release's streams and older ones).  New to old is not promised;
it works here because libxenguest's restore does not check the version
fields of the domain header, which only name the sender's hypervisor."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.simhost.cbuild import LIB_SOURCES, RELEASES, compiler, lib_command
from tests.support import stream as st
from tests.support.fixtures import ROOT, XEN_RELEASE
from tests.support.parent import (
    CBFLAGS_RESTORE_PLAIN, CBFLAGS_SAVE_PLAIN, restore_args, restore_argv, run_helper,
    save_args, save_argv,
)
from tests.support.simhost import XCFLAGS_LIVE, assert_completed, restore_from_file, save_to_file

TRIXIE = ROOT / ".cache" / "debian13" / "root"
NEW = "4.20"
NEW_HELPER = TRIXIE / "usr" / "lib" / f"xen-{NEW}" / "bin" / "libxl-save-helper"
LOADER = TRIXIE / "usr" / "lib64" / "ld-linux-x86-64.so.2"

pytestmark = pytest.mark.skipif(
    XEN_RELEASE != "4.17" or not NEW_HELPER.is_file(),
    reason="needs Xen 4.17 here and Debian 13's root with xen-utils-4.20 "
           "(./bootstrap test makes it on Debian 12)")


@pytest.fixture(scope="module")
def new_libs(tmp_path_factory) -> Path:
    """The simulated host as Xen 4.20's libraries."""
    d = tmp_path_factory.mktemp("simhost-4.20")
    for lib in LIB_SOURCES:
        out = d / RELEASES.soname(lib, NEW)
        cmd = lib_command(compiler(), lib, out, ["-O2", "-Wall", "-Werror"], NEW)
        subprocess.run(cmd, check=True)
    return d


def new_helper(new_libs, mode, fd, args):
    """argv running Debian 13's helper through the root's loader, with the
    4.20 simulated libraries first and the root's libraries after."""
    build = save_argv if mode == "save" else restore_argv
    path = f"{new_libs}:{TRIXIE / 'usr' / 'lib' / 'x86_64-linux-gnu'}"
    return [str(LOADER), "--library-path", path, *build(str(NEW_HELPER), fd, -1, args)]


def save_new(new_libs, host, dom, path, live):
    args = save_args(dom, XCFLAGS_LIVE if live else 0, CBFLAGS_SAVE_PLAIN, 0)
    with open(path, "wb") as f:
        t = run_helper(LOADER, "save", args, io_fd=f.fileno(), env=host.env, timeout=60,
                       argv=new_helper(new_libs, "save", f.fileno(), args))
    return t, path.read_bytes()


def restore_new(new_libs, host, target, path):
    args = restore_args(target, 1, 0, 2, 0, CBFLAGS_RESTORE_PLAIN, 0)
    with open(path, "rb") as f:
        return run_helper(LOADER, "restore", args, io_fd=f.fileno(), env=host.env, timeout=60,
                          argv=new_helper(new_libs, "restore", f.fileno(), args))


@pytest.mark.parametrize("kind,live", [("pv", False), ("hvm", True)])
def test_old_to_new(debian_helper, new_libs, simulated_host, tmp_path, kind, live):
    """Saved by Debian 12's helper on Xen 4.17, restored by Debian 13's on 4.20."""
    host = simulated_host
    dom = host.create_domain(8, kind=kind, vcpus=2)
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s", live=live)
    assert_completed(t)
    assert st.parse(data).xen == (4, 17)
    target = host.create_empty_domain()
    r = restore_new(new_libs, host, target, tmp_path / "s")
    assert_completed(r)
    assert "from Xen 4.17" in r.log_text()
    assert host.memory_digest(target) == host.memory_digest(dom)
    assert host.domain_state(target)["kind"] == kind


@pytest.mark.parametrize("kind,live", [("pv", False), ("hvm", True)])
def test_new_to_old(debian_helper, new_libs, simulated_host, tmp_path, kind, live):
    """Saved by Debian 13's helper on 4.20, restored by Debian 12's on 4.17:
    accepted (not promised by the specification)."""
    host = simulated_host
    dom = host.create_domain(8, kind=kind, vcpus=2)
    t, data = save_new(new_libs, host, dom, tmp_path / "s", live)
    assert_completed(t)
    assert st.parse(data).xen == (4, 20)
    target = host.create_empty_domain()
    r = restore_from_file(debian_helper, host, target, tmp_path / "s")
    assert_completed(r)
    assert "from Xen 4.20" in r.log_text()
    assert host.memory_digest(target) == host.memory_digest(dom)
