"""The simulated host runs clean under valgrind (memcheck, full leak check) and under
AddressSanitizer/UBSan inside Debian's helper, on the save, restore,
checkpoint and error paths."""

from __future__ import annotations

import shutil

import pytest

from tests.support.parent import (
    CBFLAGS_RESTORE_REMUS, CBFLAGS_SAVE_REMUS, Replies, restore_args, restore_argv,
    run_helper, save_args, save_argv,
)
from tests.support.fixtures import valgrind_output
from tests.support.simhost import assert_completed

VALGRIND = shutil.which("valgrind")
pytestmark = pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")
VG = [VALGRIND or "valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
      "--errors-for-leak-kinds=definite,possible", "--track-fds=no"]


def vg_run(helper, host, mode, args, fd, **kw):
    build = save_argv if mode == "save" else restore_argv
    argv = VG + build(str(helper), fd, -1, args)
    t = run_helper(VALGRIND, mode, args, io_fd=fd, env=host.env, argv=argv,
                   timeout=120, **kw)
    assert b"==" not in valgrind_output(t.stderr), t.stderr.decode(errors="replace")
    return t


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_valgrind_live_save_and_restore(debian_helper, simulated_host, tmp_path, kind):
    host = simulated_host
    dom = host.create_domain(4, vcpus=2, kind=kind, dirty_pages=100)
    path = tmp_path / "s"
    with open(path, "wb") as f:
        t = vg_run(debian_helper, host, "save", save_args(dom, 1), f.fileno())
    assert_completed(t)
    target = host.create_empty_domain()
    with open(path, "rb") as f:
        r = vg_run(debian_helper, host, "restore", restore_args(target), f.fileno())
    assert_completed(r)
    assert host.memory_digest(target) == host.memory_digest(dom)


def test_valgrind_remus(debian_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(2, kind="pv", dirty_pages=50)
    path = tmp_path / "s"
    with open(path, "wb") as f:
        t = vg_run(debian_helper, host, "save",
                   save_args(dom, 1, CBFLAGS_SAVE_REMUS, 1), f.fileno(),
                   replies=Replies(checkpoints=2))
    assert_completed(t)
    target = host.create_empty_domain()
    with open(path, "rb") as f:
        r = vg_run(debian_helper, host, "restore",
                   restore_args(target, cbflags=CBFLAGS_RESTORE_REMUS, stream_type=1),
                   f.fileno())
    assert_completed(r)
    assert host.memory_digest(target) == host.memory_digest(dom)


def test_valgrind_failures(debian_helper, simulated_host, tmp_path):
    """Error paths: an injected page failure in a save, a corrupt stream in a
    restore."""
    host = simulated_host
    dom = host.create_domain(2, kind="hvm")
    host.set_fault("fail-at-page:300@save")
    path = tmp_path / "s"
    with open(path, "wb") as f:
        t = vg_run(debian_helper, host, "save", save_args(dom, 1), f.fileno())
    assert_completed(t, retval=-1)
    host.clear_faults()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with open(path, "rb") as f:
        r = vg_run(debian_helper, host, "restore", restore_args(host.create_empty_domain()),
                   f.fileno())
    assert_completed(r, retval=-1)


@pytest.fixture(scope="module")
def asan_libs(tmp_path_factory):
    """The simulated libraries rebuilt with AddressSanitizer and UBSan."""
    import os
    import subprocess
    from tests.simhost.cbuild import LIB_SOURCES, RELEASES, compiler, lib_command
    from tests.support.fixtures import XEN_RELEASE
    cc = compiler()
    libasan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("no libasan for this compiler")
    out = tmp_path_factory.mktemp("asanlibs")
    for lib in LIB_SOURCES:
        subprocess.run(lib_command(cc, lib, out / RELEASES.soname(lib, XEN_RELEASE), [
            "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-Wall", "-Wextra", "-Werror"]), check=True)
    return out, libasan


def test_asan_save_restore(debian_helper, simulated_host, tmp_path, asan_libs):
    """Live HVM save, Remus PV save and their restores, plus a corrupt
    stream, with the simulated libraries under ASan/UBSan (leak detection
    on)."""
    libdir, libasan = asan_libs
    host = simulated_host
    env = dict(host.env, LD_LIBRARY_PATH=f"{libdir}:{host.env['LD_LIBRARY_PATH']}",
               LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=1:exitcode=98",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")

    def run(mode, args, path, **kw):
        with open(path, "wb" if mode == "save" else "rb") as f:
            t = run_helper(debian_helper, mode, args, io_fd=f.fileno(), env=env,
                           timeout=120, **kw)
        assert b"Sanitizer" not in t.stderr and b"runtime error" not in t.stderr, \
            t.stderr.decode(errors="replace")
        return t

    hvm = host.create_domain(4, vcpus=2, kind="hvm", dirty_pages=100)
    pv = host.create_domain(2, kind="pv", dirty_pages=50)
    assert_completed(run("save", save_args(hvm, 1), tmp_path / "h"))
    assert_completed(run("save", save_args(pv, 1, CBFLAGS_SAVE_REMUS, 1), tmp_path / "p",
                         replies=Replies(checkpoints=2)))
    a, b = host.create_empty_domain(), host.create_empty_domain()
    assert_completed(run("restore", restore_args(a), tmp_path / "h"))
    assert_completed(run("restore", restore_args(b, cbflags=CBFLAGS_RESTORE_REMUS,
                                                 stream_type=1), tmp_path / "p"))
    assert host.memory_digest(a) == host.memory_digest(hvm)
    assert host.memory_digest(b) == host.memory_digest(pv)
    data = (tmp_path / "h").read_bytes()
    (tmp_path / "bad").write_bytes(data[:100000] + b"\xff" * 64 + data[100064:])
    t = run("restore", restore_args(host.create_empty_domain()), tmp_path / "bad")
    assert t.returncode == 0 and t.complete is not None
