"""The QEMU driver's own behaviour, with a fake QEMU (fast, needs no QEMU).

The fake writes a scripted console to the file named by ``-serial file:...``
and then sleeps or exits, so each failure the driver must catch (a Xen
panic, a dom0 crash, a hang, a missing end marker) is produced on purpose.
Every test also checks that the driver ended the fake by its PID.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from . import qemu

FAKE = r'''
import json, os, sys, time
args = sys.argv[1:]
console = args[args.index("-serial") + 1].split(":", 1)[1]
with open(console + ".pid", "w") as f:
    f.write(str(os.getpid()))
with open(console, "ab", buffering=0) as out:
    for action, value in json.loads(os.environ["FAKE_QEMU_SCRIPT"]):
        if action == "print":
            out.write(value.encode())
        elif action == "sleep":
            time.sleep(value)
        elif action == "exit":
            sys.exit(value)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    prog = tmp_path / "fake-qemu"
    prog.write_text(f"#!{sys.executable}\n{FAKE}")
    prog.chmod(0o755)
    console = tmp_path / "console.log"

    def boot(script, **kw):
        monkeypatch.setenv("FAKE_QEMU_SCRIPT", json.dumps(script))
        kw.setdefault("timeout", 20)
        kw.setdefault("idle_timeout", 10)
        kw.setdefault("settle", 0.3)
        return qemu.boot([str(prog), "-serial", f"file:{console}"], console, **kw)

    boot.console = console
    return boot


def pid_of(console: Path) -> int:
    for _ in range(50):
        try:
            return int((console.parent / (console.name + ".pid")).read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise AssertionError("the fake QEMU never started")


def assert_ended(console: Path) -> None:
    pid = pid_of(console)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped: no such process


BOOT = "(XEN) Xen version 4.17.7\r\n(XEN) *** Building a PV Dom0 ***\r\n"


def test_results_and_end_marker(fake):
    out = fake([
        ["print", BOOT + "XENSR-STAGE daemons 6.3\n"],
        ["print", 'XENSR-BEGIN one\nXENSR-RESULT one PASS {"seconds": 1.5}\r\n'],
        ["print", 'XENSR-RESULT two FAIL {"error": "xl save exited with status 1"}\n'],
        ["print", "XENSR-RESULT three PASS not json\n"],
        ["print", "XENSR-END status=1\n"],
        ["sleep", 60],
    ])
    assert out.end == "status=1"
    assert out.results["one"].passed and out.results["one"].details == {"seconds": 1.5}
    assert out.results["two"].status == "FAIL"
    assert out.results["two"].details["error"] == "xl save exited with status 1"
    assert out.results["three"].details == {"text": "not json"}
    assert set(out.stages) == {"daemons", "one"}
    assert_ended(fake.console)


@pytest.mark.parametrize("line, what", [
    ("(XEN) ****************************************\n(XEN) Panic on CPU 0:\n"
     "(XEN) FATAL PAGE FAULT\n", "Xen panic"),
    ("(XEN) d0v0 Unhandled: vec 14, #PF[0001]\n(XEN) Hardware Dom0 crashed: "
     "rebooting machine in 5 seconds.\n", "dom0 crashed"),
    ("[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n", "Linux panic"),
    ("XENSR-FATAL initramfs: cannot mount the root disk /dev/vda\n",
     "fatal error in the machine"),
], ids=["xen-panic", "dom0-crash", "linux-panic", "xensr-fatal"])
def test_fails_fast_with_the_relevant_lines(fake, line, what):
    t0 = time.monotonic()
    with pytest.raises(qemu.BootError) as ei:
        fake([["print", BOOT + line], ["print", "(XEN) details after the fact\n"],
              ["sleep", 60]])
    assert time.monotonic() - t0 < 10  # not the 20 s timeout
    err = ei.value
    assert err.reason.startswith(what)
    assert any("Building a PV Dom0" in ln for ln in err.lines)
    assert what.split()[0].lower() in str(err).lower()
    assert_ended(fake.console)


def test_hang_is_reported(fake):
    t0 = time.monotonic()
    with pytest.raises(qemu.BootError) as ei:
        fake([["print", BOOT + "XENSR-BEGIN stuck\n"], ["sleep", 60]], idle_timeout=1.0)
    assert time.monotonic() - t0 < 8
    assert "hang: no console output for 1 s" in ei.value.reason
    assert "XENSR-BEGIN stuck" in ei.value.lines
    assert_ended(fake.console)


def test_missing_end_marker_is_reported(fake):
    with pytest.raises(qemu.BootError) as ei:
        fake([["print", BOOT + "XENSR-RESULT one PASS {}\n"], ["exit", 0]])
    assert "QEMU exited with status 0 before the end marker" in ei.value.reason
    assert "XENSR-RESULT one PASS {}" in ei.value.lines


def test_overall_timeout(fake):
    script = [["print", BOOT]] + [["print", "tick\n"], ["sleep", 0.3]] * 100
    with pytest.raises(qemu.BootError) as ei:
        fake(script, timeout=1.5, idle_timeout=10)
    assert "timeout: no end marker after 2 s" in ei.value.reason
    assert_ended(fake.console)


def test_preflight_reports_missing_or_broken_qemu(tmp_path):
    with pytest.raises(qemu.QemuUnavailable, match="not found"):
        qemu.preflight(str(tmp_path / "no-such-qemu"))
    broken = tmp_path / "qemu-that-fails"
    broken.write_text("#!/bin/sh\necho 'qemu: could not load PC BIOS' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(qemu.QemuUnavailable, match="could not load PC BIOS"):
        qemu.preflight(str(broken))


def test_initrd_paths_with_commas_are_refused(tmp_path):
    with pytest.raises(ValueError, match="comma"):
        qemu.qemu_command(xen=tmp_path / "xen", vmlinuz=tmp_path / "a,b", initrd=tmp_path / "i",
                          root=tmp_path / "r", payload=tmp_path / "p", console=tmp_path / "c")


def test_export_and_imported_disks_follow_root_and_payload(tmp_path):
    """The export disk is writable, an imported one read-only (dom0 tells
    them apart by that flag), both after the root and payload disks."""
    kw = dict(xen=tmp_path / "xen", vmlinuz=tmp_path / "v", initrd=tmp_path / "i",
              root=tmp_path / "r", payload=tmp_path / "p", console=tmp_path / "c")
    drives = lambda cmd: [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]  # noqa: E731
    plain = drives(qemu.qemu_command(**kw))
    assert len(plain) == 2
    both = drives(qemu.qemu_command(**kw, export=tmp_path / "e", imported=tmp_path / "m"))
    assert both[:2] == plain
    assert both[2] == f"file={tmp_path / 'e'},format=raw,if=virtio"
    assert both[3] == f"file={tmp_path / 'm'},format=raw,if=virtio,readonly=on"
    only_import = drives(qemu.qemu_command(**kw, imported=tmp_path / "m"))
    assert only_import[2].endswith("readonly=on")
    with pytest.raises(ValueError, match="comma"):
        qemu.qemu_command(**kw, export=tmp_path / "e,x")


def test_each_release_boots_once_and_hands_its_export_to_the_next(monkeypatch, tmp_path):
    """The 4.20 boot is given the 4.17 boot's export disk (4.17 booted
    first if need be); each release boots once; a release without its
    Debian is skipped with the reason, and the next one boots without an
    imported disk."""
    from . import conftest, images, runner

    calls = []

    def fake_run(release, *, export=False, imported=None, **kw):
        calls.append((release, export, imported))
        if release == "4.17" and os.environ.get("FAKE_NO_417"):
            raise images.Unavailable("no Debian 12 here")
        return runner.Run(None, None, 0.0, tmp_path / f"export-{release}.img" if export else None)

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(qemu, "preflight", lambda *a: "qemu")
    monkeypatch.setattr(conftest, "TIERS", {})
    monkeypatch.delenv("XENSR_REALXEN_RELEASES", raising=False)
    t20 = conftest.tier("4.20")
    assert calls == [("4.17", True, None), ("4.20", False, tmp_path / "export-4.17.img")]
    assert conftest.tier("4.17").run.export == tmp_path / "export-4.17.img"
    assert conftest.tier("4.20") is t20 and len(calls) == 2  # once each

    calls.clear()
    monkeypatch.setattr(conftest, "TIERS", {})
    monkeypatch.setenv("FAKE_NO_417", "1")
    assert conftest.tier("4.20").run is not None
    assert "no Debian 12 here" in conftest.tier("4.17").skipped
    assert calls == [("4.17", True, None), ("4.20", False, None)]

    calls.clear()
    monkeypatch.setattr(conftest, "TIERS", {})
    monkeypatch.setenv("XENSR_REALXEN_RELEASES", "4.20")
    conftest.tier("4.20")
    assert calls == [("4.20", False, None)]
