"""Boot Xen + dom0 under QEMU (TCG) and read the scenario results.

The machine prints everything on its serial console, which QEMU writes to a
file that :func:`boot` follows while the machine runs.  Lines it acts on:

* ``XENSR-RESULT <name> <PASS|FAIL|SKIP> <json>``: one scenario's outcome;
* ``XENSR-STAGE <what> <uptime>`` / ``XENSR-BEGIN <name>``: progress;
* ``XENSR-END status=<n>``: the scenarios are over (the machine powers off);
* ``XENSR-FATAL <why>``: the machine cannot go on (e.g. no root disk).

Besides ``XENSR-FATAL`` the boot ends at once, with the console lines that
matter, on a Xen panic, a dom0 crash or a Linux panic, when nothing is
printed for ``idle_timeout`` seconds (a hang), when QEMU exits before the end
marker, or after ``timeout`` seconds in all.  QEMU is always ended by its
own PID before :func:`boot` returns or raises.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

QEMU = "qemu-system-x86_64"


def qemu_binary() -> str:
    """``$XENSR_REALXEN_QEMU``, else qemu-system-x86_64 (from PATH)."""
    return os.environ.get("XENSR_REALXEN_QEMU") or QEMU

# The CPU: TCG's "max" with SMAP off (with SMAP a PV dom0 crashes in Xen's
# create_bounce_frame) and XSAVE off: with XSAVE, processes in a 2-vCPU PV
# dom0 see their SIMD registers change under them now and then (wrong
# hashes, garbage from memcpy, segfaulting xl), with or without MTTCG;
# without it the kernel and Xen use FXSAVE and that stops.  SVM (with NPT)
# stays, for the PVH guest.
CPU = "max,-smap,-xsave"

# Xen: serial console; dom0 gets half the machine's memory, fixed, so guests
# need no ballooning; SMAP off as well.
XEN_ARGS = ("console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M "
            "dom0_max_vcpus=2 smap=0 loglvl=info guest_loglvl=info")
# dom0's kernel (no commas: QEMU's -initrd splits modules on them).
DOM0_ARGS = "console=hvc0 earlyprintk=xen loglevel=4 rootwait"

FATAL_PATTERNS = [
    ("Xen panic", re.compile(r"Panic on CPU")),
    ("dom0 crashed", re.compile(r"Dom0 crashed")),
    ("Linux panic", re.compile(r"Kernel panic - not syncing")),
    ("fatal error in the machine", re.compile(r"XENSR-FATAL")),
]

RESULT_RE = re.compile(r"XENSR-RESULT (\S+) (PASS|FAIL|SKIP)(?: (.*))?$")
STAGE_RE = re.compile(r"XENSR-(STAGE|BEGIN) (\S+)")
END_RE = re.compile(r"XENSR-END\b(.*)$")


class QemuUnavailable(Exception):
    """QEMU cannot run on this machine (the tier is skipped, with this reason)."""


class BootError(Exception):
    """The boot failed before all scenarios reported; carries console lines."""

    def __init__(self, reason: str, lines: Sequence[str] = (), console: Optional[Path] = None):
        self.reason = reason
        self.lines = list(lines)
        self.console = console
        text = reason
        if self.lines:
            text += "\nconsole (last lines):\n" + "\n".join("  | " + s for s in self.lines)
        if console is not None:
            text += f"\nfull console log: {console}"
        super().__init__(text)


@dataclasses.dataclass
class Result:
    name: str
    status: str
    details: dict
    line: str

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


@dataclasses.dataclass
class BootOutcome:
    results: Dict[str, Result]
    end: str
    seconds: float
    console: Path
    stages: Dict[str, float]


def preflight(qemu: Optional[str] = None) -> str:
    """The QEMU binary's path; QemuUnavailable if it is missing or cannot
    start a TCG machine."""
    qemu = qemu or qemu_binary()
    path = shutil.which(qemu)
    if path is None:
        raise QemuUnavailable(f"{qemu} not found (apt-get install qemu-system-x86)")
    # Start an empty machine, stopped, and see it stay up for a moment.
    cmd = [path, "-accel", "tcg", "-machine", "none", "-nodefaults", "-display", "none",
           "-monitor", "none", "-serial", "none", "-S"]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise QemuUnavailable(f"{path} cannot be started: {exc}") from None
    out = ""
    try:
        status = proc.wait(timeout=1.0)
        if proc.stdout is not None:
            out = proc.stdout.read().decode(errors="replace").strip()
    except subprocess.TimeoutExpired:
        status = None
    finally:
        end_process(proc)
    if status is not None:
        raise QemuUnavailable(f"{path} exits at once (status {status}): {out[-500:]}")
    return path


def end_process(proc: subprocess.Popen) -> None:
    """Kill ``proc`` by its PID (if still running) and reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - a D-state QEMU
        pass
    for f in (proc.stdout, proc.stderr, proc.stdin):
        if f is not None:
            f.close()


def qemu_command(*, xen: Path, vmlinuz: Path, initrd: Path, root: Path, payload: Path,
                 console: Path, qemu: str = QEMU, memory_mib: int = 2048, cpus: int = 2,
                 xen_args: str = XEN_ARGS, dom0_args: str = DOM0_ARGS,
                 export: Optional[Path] = None, imported: Optional[Path] = None) -> List[str]:
    """The machine: root disk vda, payload vdb, then when given ``export``
    (written by dom0: what a later boot of another release reads) and
    ``imported`` (read-only: an earlier boot's export); dom0 tells those
    two apart by their read-only flag."""
    for p in (vmlinuz, initrd):
        if "," in str(p):
            raise ValueError(f"QEMU's -initrd cannot take a path with a comma: {p}")
    for p in (root, payload, export, imported):
        if p is not None and "," in str(p):
            raise ValueError(f"QEMU's -drive cannot take a path with a comma: {p}")
    extra: List[str] = []
    if export is not None:
        extra += ["-drive", f"file={export},format=raw,if=virtio"]
    if imported is not None:
        extra += ["-drive", f"file={imported},format=raw,if=virtio,readonly=on"]
    return [
        qemu, "-accel", "tcg,thread=multi", "-cpu", os.environ.get("XENSR_REALXEN_CPU") or CPU,
        "-m", str(memory_mib), "-smp", str(cpus),
        "-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
        "-monitor", "none", "-serial", f"file:{console}",
        "-kernel", str(xen), "-append", xen_args,
        "-initrd", f"{vmlinuz} {dom0_args},{initrd}",
        # The root disk is shared by runs: writes go to a throw-away overlay.
        "-drive", f"file={root},format=raw,if=virtio,snapshot=on",
        "-drive", f"file={payload},format=raw,if=virtio,readonly=on",
    ] + extra


class ConsoleReader:
    """Follow a growing console file line by line (``\\r`` counts as a break)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = ""
        self.lines: List[str] = []

    def poll(self) -> List[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        text = self.partial + data.decode(errors="replace")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        parts = text.split("\n")
        self.partial = parts.pop()
        new = [p for p in parts if p.strip()]
        self.lines += new
        return new

    def flush_partial(self) -> List[str]:
        if self.partial.strip():
            self.lines.append(self.partial)
            self.partial = ""
            return [self.lines[-1]]
        self.partial = ""
        return []

    def tail(self, n: int = 60) -> List[str]:
        return self.lines[-n:]


def boot(cmd: Sequence[str], console: Path, *, timeout: float = 900.0,
         idle_timeout: float = 120.0, settle: float = 2.0,
         log=None) -> BootOutcome:
    """Run the machine until its end marker; always end QEMU.

    ``cmd`` must write the serial console to ``console``.  ``log``, when
    given, is called with each new console line.
    """
    console.parent.mkdir(parents=True, exist_ok=True)
    if console.exists():
        console.unlink()
    qlog = console.with_suffix(".qemu.log")
    reader = ConsoleReader(console)
    results: Dict[str, Result] = {}
    stages: Dict[str, float] = {}
    t0 = time.monotonic()
    last_output = t0
    with open(qlog, "wb") as qout:
        try:
            proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=qout,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise QemuUnavailable(f"{cmd[0]} cannot be started: {exc}") from None
    try:
        while True:
            new = reader.poll()
            now = time.monotonic()
            if new:
                last_output = now
            for line in new:
                if log is not None:
                    log(line)
                m = RESULT_RE.search(line)
                if m:
                    results[m.group(1)] = Result(m.group(1), m.group(2),
                                                 parse_details(m.group(3)), line)
                    continue
                m = STAGE_RE.search(line)
                if m:
                    stages[m.group(2)] = now - t0
                m = END_RE.search(line)
                if m:
                    return BootOutcome(results, m.group(1).strip(), now - t0, console, stages)
                for what, pat in FATAL_PATTERNS:
                    if pat.search(line):
                        # Give the machine a moment to print the details.
                        settle_until = time.monotonic() + settle
                        while time.monotonic() < settle_until and proc.poll() is None:
                            time.sleep(0.1)
                            for extra in reader.poll():
                                if log is not None:
                                    log(extra)
                        reader.poll()
                        reader.flush_partial()
                        raise BootError(f"{what}: {line.strip()}",
                                        relevant(reader.lines, pat), console)
            status = proc.poll()
            if status is not None:
                reader.poll()
                reader.flush_partial()
                qerr = qlog.read_text(errors="replace").strip()
                raise BootError(
                    f"QEMU exited with status {status} before the end marker"
                    + (f"; QEMU said: {qerr[-800:]}" if qerr else ""),
                    reader.tail(), console)
            if now - last_output > idle_timeout:
                reader.flush_partial()
                raise BootError(f"hang: no console output for {idle_timeout:.0f} s",
                                reader.tail(), console)
            if now - t0 > timeout:
                reader.flush_partial()
                raise BootError(f"timeout: no end marker after {timeout:.0f} s",
                                reader.tail(), console)
            time.sleep(0.2)
    finally:
        end_process(proc)


def relevant(lines: List[str], pat: "re.Pattern[str]", before: int = 40,
             after: int = 40) -> List[str]:
    """The lines around the first match of ``pat``."""
    for i, line in enumerate(lines):
        if pat.search(line):
            return lines[max(0, i - before):i + after]
    return lines[-before:]


def parse_details(text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError:
        return {"text": text}
    return obj if isinstance(obj, dict) else {"value": obj}
