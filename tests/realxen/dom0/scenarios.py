"""The scenarios, run in dom0 on real Xen 4.17 (python3, stdlib + xensr).

Usage (from dom0's init): ``python3 scenarios.py PAYLOAD_DIR``.  Each scenario
prints ``XENSR-BEGIN name`` and then exactly one
``XENSR-RESULT name PASS|FAIL {json details}`` on the console; the host
side asserts those markers.  ``xensr.scenarios=a+b`` on dom0's kernel
command line runs only the named scenarios.

The guest is a PV domain whose console prints ``XENSR-TICK n uptime`` each
second; xenconsoled logs it to a file, where the counter must carry on
across a save and restore (a rebooted guest would start again from 1).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

PAYLOAD = Path(sys.argv[1] if len(sys.argv) > 1 else "/payload")
XEN_BIN = Path("/usr/lib/xen-4.17/bin")
XL = str(XEN_BIN / "xl")
DEBIAN_HELPER = str(XEN_BIN / "libxl-save-helper")
CONSOLE_DIR = Path("/var/log/xen/console")
WORK = Path("/tmp")  # tmpfs: save files live in dom0's memory
BROKEN_HELPER = Path("/run/xensr-broken-helper")
CMD_TIMEOUT = 180

Tick = Tuple[int, float]


class Failed(Exception):
    """A scenario's check failed; the message says what was seen."""


def say(kind: str, text: str) -> None:
    print(f"XENSR-{kind} {text}", flush=True)


def note(text: str) -> None:
    say("LOG", text)


def tail(text: str, n: int = 12) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def run(cmd: List[str], *, env: Optional[Dict[str, str]] = None, timeout: float = CMD_TIMEOUT,
        check: bool = True, what: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a command, stdout and stderr together, stdin from /dev/null."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=full_env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        raise Failed(f"{what or cmd[0]}: no end after {timeout:.0f} s: {tail(out)}") from None
    r.stdout = r.stdout.decode(errors="replace")
    if check and r.returncode != 0:
        raise Failed(f"{what or ' '.join(cmd)} exited with status {r.returncode}: "
                     f"{tail(r.stdout)}")
    return r


# --------------------------------------------------------------------------
# What the hypervisor says about a domain (libxenctrl through ctypes)

DOMINF_DYING = 1 << 0
DOMINF_SHUTDOWN = 1 << 2
DOMINF_PAUSED = 1 << 3
SHUTDOWN_SHIFT = 16
SHUTDOWN_SUSPEND = 2


class Xc:
    """``xc_domain_getinfolist`` for one domain: its flags word."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libxenctrl.so.4.17", use_errno=True)
        self.lib.xc_interface_open.restype = ctypes.c_void_p
        self.lib.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_uint]
        self.lib.xc_domain_getinfolist.restype = ctypes.c_int
        self.lib.xc_domain_getinfolist.argtypes = [ctypes.c_void_p, ctypes.c_uint32,
                                                   ctypes.c_uint, ctypes.c_void_p]
        self.xch = self.lib.xc_interface_open(None, None, 0)
        if not self.xch:
            raise OSError(ctypes.get_errno(), "xc_interface_open failed")
        # xc_domaininfo_t is about 130 bytes in 4.17; leave room.
        self.buf = ctypes.create_string_buffer(1024)

    def flags(self, domid: int) -> Optional[int]:
        """The XEN_DOMINF_* flags of ``domid``, None if it does not exist."""
        n = self.lib.xc_domain_getinfolist(self.xch, domid, 1, self.buf)
        if n < 1:
            return None
        dom = int.from_bytes(self.buf.raw[0:2], "little")
        if dom != domid:
            return None
        return int.from_bytes(self.buf.raw[4:8], "little")

    def state(self, domid: int) -> str:
        f = self.flags(domid)
        if f is None:
            return "gone"
        if f & DOMINF_DYING:
            return "dying"
        if f & DOMINF_SHUTDOWN:
            return f"shutdown({(f >> SHUTDOWN_SHIFT) & 0xFF})"
        if f & DOMINF_PAUSED:
            return "paused"
        return "running"


XC: Optional[Xc] = None


def xc() -> Xc:
    global XC
    if XC is None:
        XC = Xc()
    return XC


# --------------------------------------------------------------------------
# The guest


class Guest:
    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.cfg = Path(f"/run/{name}.cfg")
        self.log = CONSOLE_DIR / f"guest-{name}.log"

    def write_config(self) -> None:
        self.cfg.write_text(
            f'name = "{self.name}"\n'
            f'type = "{self.kind}"\n'
            f'kernel = "{PAYLOAD}/guest/vmlinuz"\n'
            f'ramdisk = "{PAYLOAD}/guest/initrd.gz"\n'
            'extra = "console=hvc0 quiet"\n'
            "memory = 128\n"
            "vcpus = 1\n"
            + ('tsc_mode = "native"\n' if self.kind == "pvh" else "") +
            'on_crash = "preserve"\n')

    def domid(self) -> Optional[int]:
        r = run([XL, "domid", self.name], check=False, timeout=60)
        if r.returncode != 0:
            return None
        try:
            return int(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    def state(self) -> str:
        d = self.domid()
        return "gone" if d is None else xc().state(d)

    def create(self) -> None:
        self.write_config()
        t0 = time.monotonic()
        run([XL, "create", str(self.cfg)], what="xl create")
        self.wait_tick(lambda n, up: True, 0, 90)
        note(f"guest {self.name} created as domain {self.domid()} in "
             f"{time.monotonic() - t0:.1f} s")

    def destroy(self) -> None:
        d = self.domid()
        if d is not None:
            run([XL, "destroy", str(d)], what=f"xl destroy {self.name}")

    def ensure_running(self) -> None:
        """Make sure the guest exists and runs (recreate it if a scenario lost it)."""
        d = self.domid()
        if d is not None and xc().state(d) == "running":
            return
        if d is not None:
            note(f"guest domain {d} is {xc().state(d)}: destroying and recreating it")
            run([XL, "destroy", str(d)], check=False)
        if self.log.exists():
            self.log.unlink()
        self.create()

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def ticks(self, start: int = 0) -> List[Tick]:
        try:
            with open(self.log, "rb") as f:
                if start > os.fstat(f.fileno()).st_size:
                    start = 0  # the log was started afresh
                f.seek(start)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for m in re.finditer(r"XENSR-TICK (\d+) ([0-9.]+)", text):
            out.append((int(m.group(1)), float(m.group(2))))
        return out

    def wait_tick(self, pred: Callable[[int, float], bool], start: int,
                  timeout: float) -> Tick:
        deadline = time.monotonic() + timeout
        while True:
            for t in self.ticks(start):
                if pred(*t):
                    return t
            if time.monotonic() > deadline:
                seen = self.ticks(start)
                raise Failed(f"guest console: no matching tick within {timeout:.0f} s "
                             f"(state {self.state()}, ticks seen after offset {start}: "
                             f"{seen[:3]}..{seen[-3:]})")
            time.sleep(0.2)

    def ready(self, min_n: int = 5) -> Tick:
        """Wait until the counter is at least ``min_n``; return the last tick."""
        self.wait_tick(lambda n, up: n >= min_n, 0, 60)
        return self.ticks()[-1]

    def carries_on(self, before: Tick, start: int, timeout: float = 60) -> dict:
        """Check that the counter goes on from ``before`` in the log after ``start``."""
        n0 = before[0]
        self.wait_tick(lambda n, up: n >= n0 + 2, start, timeout)
        after = self.ticks(start)
        restarted = [t for t in after if t[0] < n0 - 2]
        if restarted:
            raise Failed(f"guest counter restarted: before save {before}, after restore "
                         f"{after[:4]}")
        return {"before": list(before), "after_first": list(after[0]),
                "after_last": list(after[-1])}

    def advances(self, timeout: float = 30) -> dict:
        """Check that the running guest's counter still goes up."""
        start = self.log_size()
        last = self.ticks()[-1] if self.ticks() else (0, 0.0)
        self.wait_tick(lambda n, up: n >= last[0] + 2, start, timeout)
        return {"before": list(last), "after": list(self.ticks()[-1])}

    def config_json(self) -> str:
        """The guest's libxl configuration as xl save stores it (JSON)."""
        d = self.domid()
        r = run([XL, "list", "-l", str(d)], what="xl list -l")
        doms = json.loads(r.stdout)
        if not doms or "config" not in doms[0]:
            raise Failed(f"xl list -l {d}: no config in {r.stdout[:200]}")
        return json.dumps(doms[0]["config"], indent=4)


# PV: what the tier is about.  PVH: Debian's Xen is built without shadow
# paging, and a PV guest's log-dirty mode needs it, so live saves run on a
# PVH guest (HVM container, no device model; log-dirty through HAP).
PV = Guest("xensr-pv", "pv")
PVH = Guest("xensr-pvh", "pvh")


# --------------------------------------------------------------------------
# Helpers, xl's log


def xensr_helper() -> str:
    import xensr

    fn = getattr(xensr, "helper_path", None)
    path = fn() if callable(fn) else str(Path(xensr.__file__).parent / "bin" / "xensr-save-helper")
    path = str(path)
    if not os.access(path, os.X_OK):
        raise Failed(f"xensr's helper {path} is missing or not executable")
    return path


def helper_lines(xl_output: str) -> List[str]:
    """The lines xl printed for its save/restore helper's log frames.

    Both helpers log with the context "libxl-save-helper"; xl's stdio logger
    prints ``CONTEXT: LEVEL: text``.
    """
    return [ln.strip() for ln in xl_output.replace("\r", "\n").splitlines()
            if re.match(r"\s*libxl-save-helper: \w+: ", ln)]


def first_helper_line(xl_output: str, what: str) -> str:
    lines = helper_lines(xl_output)
    if not lines:
        raise Failed(f"{what}: no helper log line in xl's debug output: {tail(xl_output, 20)}")
    return lines[0]


def make_broken_helper() -> str:
    BROKEN_HELPER.write_text("#!/bin/sh\n# A save/restore helper that fails at once.\nexit 1\n")
    BROKEN_HELPER.chmod(0o755)
    return str(BROKEN_HELPER)


# --------------------------------------------------------------------------
# Scenario 1: xl save / xl restore through a given helper


def check_helper_line(line: str, op: str, xensr_expected: bool) -> None:
    """The helper's first log line: "starting save" / "starting restore", and
    "xensr" in it exactly when xensr's helper is the one expected."""
    if f"starting {op}" not in line:
        raise Failed(f"xl {op}: the helper's first log line is not its start: {line!r}")
    if xensr_expected and "xensr" not in line:
        raise Failed(f"xl {op}: the helper's first log line does not name xensr, so "
                     f"xensr's helper did not answer: {line!r}")
    if not xensr_expected and "xensr" in line:
        raise Failed(f"xl {op}: xensr's helper answered instead of Debian's: {line!r}")


def xl_save_restore(g: Guest, helper: str, xensr_expected: bool) -> dict:
    g.ensure_running()
    before = g.ready()
    path = WORK / "xl.save"
    env = {"LIBXL_SAVE_HELPER": helper}
    t0 = time.monotonic()
    r = run([XL, "-vvv", "save", g.name, str(path)], env=env, check=False)
    t_save = time.monotonic() - t0
    if r.returncode != 0:
        raise Failed(f"xl save with LIBXL_SAVE_HELPER={helper} exited with status "
                     f"{r.returncode}: {tail(r.stdout)}")
    first_save = first_helper_line(r.stdout, "xl save")
    check_helper_line(first_save, "save", xensr_expected)
    if g.domid() is not None:
        raise Failed("the guest still exists after xl save")
    start = g.log_size()
    t0 = time.monotonic()
    r2 = run([XL, "-vvv", "restore", str(path)], env=env, check=False)
    t_restore = time.monotonic() - t0
    if r2.returncode != 0:
        raise Failed(f"xl restore with LIBXL_SAVE_HELPER={helper} exited with status "
                     f"{r2.returncode}: {tail(r2.stdout)}")
    first_restore = first_helper_line(r2.stdout, "xl restore")
    check_helper_line(first_restore, "restore", xensr_expected)
    cont = g.carries_on(before, start)
    size = path.stat().st_size
    path.unlink()
    return {"save_s": round(t_save, 2), "restore_s": round(t_restore, 2),
            "file_bytes": size, "helper_save": first_save,
            "helper_restore": first_restore, "counter": cont}


def scenario_xl_save_restore() -> dict:
    return xl_save_restore(PV, xensr_helper(), True)


def scenario_xl_save_restore_pvh() -> dict:
    return xl_save_restore(PVH, xensr_helper(), True)


def scenario_xl_save_restore_debian() -> dict:
    """The same with Debian's helper: the baseline the tier itself relies on."""
    return xl_save_restore(PV, DEBIAN_HELPER, False)


# --------------------------------------------------------------------------
# Scenario 2: the xensr API saves; xl restore brings the guest back


class XenstoreSuspend:
    """Callbacks: ask the guest to suspend through xenstore, wait for Xen to see it."""

    def __init__(self, domid: int, timeout: float = 60.0) -> None:
        self.domid = domid
        self.timeout = timeout
        self.suspended_after: Optional[float] = None
        self.calls: List[str] = []

    def suspend(self) -> bool:
        self.calls.append("suspend")
        t0 = time.monotonic()
        run(["xenstore-write", f"/local/domain/{self.domid}/control/shutdown", "suspend"],
            what="xenstore-write control/shutdown")
        while time.monotonic() - t0 < self.timeout:
            f = xc().flags(self.domid)
            if f is None:
                note(f"suspend: domain {self.domid} vanished")
                return False
            if f & DOMINF_SHUTDOWN:
                reason = (f >> SHUTDOWN_SHIFT) & 0xFF
                if reason == SHUTDOWN_SUSPEND:
                    self.suspended_after = time.monotonic() - t0
                    return True
                note(f"suspend: domain {self.domid} shut down with reason {reason}")
                return False
            time.sleep(0.005)
        note(f"suspend: domain {self.domid} did not suspend within {self.timeout:.0f} s")
        return False

    def switch_qemu_logdirty(self, domid: int, enable: int) -> None:
        # A PV guest has no device model; libxc does not call this for PV.
        self.calls.append(f"switch_qemu_logdirty({domid},{enable})")


def api_save_to_file(domid: int, path: Path, callbacks, *, live: bool, helper: str,
                     config: str):
    """Save ``domid`` with the xensr API into an xl save file at ``path``."""
    import xensr
    from xensr import xlfile

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        xlfile.write_preamble(fd, config)
        result = xensr.save_domain(domid, fd, callbacks, live=live, helper=helper,
                                   timeout=CMD_TIMEOUT)
        xlfile.write_trailer(fd)
    finally:
        os.close(fd)
    return result


def api_save_restore(g: Guest, helper: str, live: bool) -> dict:
    g.ensure_running()
    before = g.ready()
    domid = g.domid()
    config = g.config_json()
    cb = XenstoreSuspend(domid)
    path = WORK / "api.save"
    t0 = time.monotonic()
    result = api_save_to_file(domid, path, cb, live=live, helper=helper, config=config)
    t_save = time.monotonic() - t0
    if cb.suspended_after is None:
        raise Failed(f"the save returned ({result!r}) but the suspend callback never "
                     f"saw the guest suspend (calls: {cb.calls})")
    state = xc().state(domid)
    if state != f"shutdown({SHUTDOWN_SUSPEND})":
        raise Failed(f"after the save the domain is {state}, not shut down for suspend")
    run([XL, "destroy", str(domid)], what="xl destroy")
    start = g.log_size()
    t0 = time.monotonic()
    r = run([XL, "-vvv", "restore", str(path)], check=False)
    t_restore = time.monotonic() - t0
    if r.returncode != 0:
        raise Failed(f"xl restore of the file saved through the API exited with status "
                     f"{r.returncode}: {tail(r.stdout)}")
    cont = g.carries_on(before, start)
    size = path.stat().st_size
    path.unlink()
    return {"save_s": round(t_save, 2), "restore_s": round(t_restore, 2),
            "suspend_s": round(cb.suspended_after, 3), "file_bytes": size,
            "result": repr(result)[:200], "counter": cont}


def scenario_api_save_xensr_nonlive() -> dict:
    return api_save_restore(PV, xensr_helper(), live=False)


def scenario_api_save_xensr_live() -> dict:
    return api_save_restore(PVH, xensr_helper(), live=True)


def scenario_api_save_debian_nonlive() -> dict:
    return api_save_restore(PV, DEBIAN_HELPER, live=False)


def scenario_api_save_debian_live() -> dict:
    return api_save_restore(PVH, DEBIAN_HELPER, live=True)


def scenario_api_save_pv_live_unsupported() -> dict:
    """A live save of a PV guest needs shadow paging, which Debian's Xen
    lacks: libxc fails to enable log-dirty mode.  xensr must report that as
    a libxc failure (with errno) and the guest must go on running."""
    import xensr

    PV.ensure_running()
    PV.ready()
    domid = PV.domid()
    cb = XenstoreSuspend(domid)
    path = WORK / "pv-live.save"
    try:
        res = api_save_to_file(domid, path, cb, live=True, helper=xensr_helper(),
                               config=PV.config_json())
    except xensr.SaveRestoreError as exc:
        out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
               "retval": exc.retval, "errno": exc.errno}
    else:
        raise Failed(f"a live save of a PV guest succeeded ({res!r}): this hypervisor "
                     "has shadow paging after all; make the PV guest's live scenarios live")
    finally:
        if path.exists():
            path.unlink()
    if cb.calls:
        raise Failed(f"the guest was asked to suspend although log-dirty failed: {cb.calls}")
    state = xc().state(domid)
    if state != "running":
        raise Failed(f"after the failed live save the guest is {state}")
    out["counter"] = PV.advances()
    return out


# --------------------------------------------------------------------------
# Scenario 3: a live save cancelled during precopy


class LogTail(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def helper_processes() -> List[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"xensr-save-helper" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


class CancelDuringPrecopy(XenstoreSuspend):
    """Callbacks that note precopy progress and never expect a suspend."""

    def __init__(self, domid: int, loop: asyncio.AbstractEventLoop,
                 started: asyncio.Event) -> None:
        super().__init__(domid)
        self.loop = loop
        self.started = started
        self.progress_seen: List[Tuple] = []

    def progress(self, *args) -> None:
        self.progress_seen.append(args)
        # Pages are flowing once a report counts some done (an integer > 0
        # that is not the total), or after a few reports.
        nums = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if (len(nums) >= 2 and 0 < nums[-2] < nums[-1]) or len(self.progress_seen) >= 3:
            self.started.set()


def scenario_api_cancel_precopy() -> dict:
    import xensr
    import xensr.aio

    PVH.ensure_running()
    PVH.ready()
    domid = PVH.domid()
    helper = xensr_helper()
    path = WORK / "cancel.save"
    logs = LogTail()  # xensr's logging, where the helper's log lines go
    root = logging.getLogger()
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)

    async def go() -> dict:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        cb = CancelDuringPrecopy(domid, loop, started)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            task = asyncio.ensure_future(xensr.aio.save_domain(
                domid, fd, cb, live=True, helper=helper, timeout=CMD_TIMEOUT))
            try:
                await asyncio.wait_for(asyncio.shield(started.wait()), 60)
            except asyncio.TimeoutError:
                task.cancel()
                raise Failed("no progress from the live save within 60 s") from None
            if task.done():
                raise Failed(f"the live save ended before it could be cancelled: "
                             f"{task.result()!r}")
            t0 = time.monotonic()
            task.cancel()
            try:
                res = await task
            except asyncio.CancelledError:
                outcome = "CancelledError"
            except xensr.Aborted as exc:
                outcome = f"Aborted: {exc}"
            else:
                raise Failed(f"the cancelled save returned {res!r}")
            return {"outcome": outcome, "cancel_s": round(time.monotonic() - t0, 2),
                    "suspend_calls": cb.calls, "progress": len(cb.progress_seen)}
        finally:
            os.close(fd)

    try:
        details = asyncio.run(go())
    finally:
        root.removeHandler(logs)
    if details["suspend_calls"]:
        raise Failed(f"the guest was asked to suspend during a cancelled precopy: {details}")
    state = xc().state(domid)
    if state != "running":
        raise Failed(f"after the cancelled save the guest is {state}")
    left = helper_processes()
    if left:
        raise Failed(f"helper processes left after the cancel: {left}")
    details["counter"] = PVH.advances()
    unwound = [ln for ln in logs.lines if "complete r=-1" in ln]
    details["helper_unwound"] = unwound[:1]
    if not unwound:
        raise Failed(f"the helper did not unwind through libxc (no 'complete r=-1' in its "
                     f"log): last lines {logs.lines[-6:]}")
    path.unlink()
    return details


# --------------------------------------------------------------------------
# A deliberately broken helper must be detected


def scenario_broken_helper_detected() -> dict:
    import xensr

    broken = make_broken_helper()
    PV.ensure_running()
    out = {}
    # The scenario-1 check itself, run with a helper that exits at once.
    try:
        xl_save_restore(PV, broken, True)
    except Failed as exc:
        out["xl_save_restore"] = str(exc)[:400]
    else:
        raise Failed("xl save/restore with a helper that exits at once was reported as passing")
    if "exited with status" not in out["xl_save_restore"]:
        raise Failed(f"the failure does not say xl save failed: {out['xl_save_restore']}")
    PV.ensure_running()
    # The API: the helper's exit is a typed error.
    domid = PV.domid()
    path = WORK / "broken.save"
    try:
        api_save_to_file(domid, path, XenstoreSuspend(domid), live=False, helper=broken,
                         config=PV.config_json())
    except xensr.HelperExitError as exc:
        out["api"] = f"{type(exc).__name__}: {exc}"[:400]
        if getattr(exc, "status", None) != 1:
            raise Failed(f"HelperExitError with status {exc.status!r}, the helper exited 1")
    except Exception as exc:
        raise Failed(f"the API raised {type(exc).__name__}: {exc} for a helper that exits 1, "
                     "not HelperExitError") from None
    else:
        raise Failed("the API reported success with a helper that exits at once")
    finally:
        if path.exists():
            path.unlink()
    state = xc().state(domid)
    if state != "running":
        raise Failed(f"after the broken helper the guest is {state}")
    return out


# --------------------------------------------------------------------------
# Scenario 4: xl save against the xensr API, same guest, same boot


def scenario_figure(rounds: int = 3) -> dict:
    helper = xensr_helper()
    PVH.destroy()  # one guest running while timing
    xl_times: List[float] = []
    api_times: List[float] = []
    sizes = {}
    for i in range(rounds):
        # xl save, stock (Debian's helper), then xl restore.
        PV.ensure_running()
        PV.ready(3)
        path = WORK / "figure-xl.save"
        t0 = time.monotonic()
        run([XL, "save", PV.name, str(path)], what="xl save")
        xl_times.append(time.monotonic() - t0)
        sizes["xl"] = path.stat().st_size
        run([XL, "restore", str(path)], what="xl restore")
        path.unlink()
        # The xensr API (xensr's helper, non-live) into an xl save file.
        PV.ready(3)
        domid = PV.domid()
        config = PV.config_json()
        path = WORK / "figure-api.save"
        cb = XenstoreSuspend(domid)
        t0 = time.monotonic()
        api_save_to_file(domid, path, cb, live=False, helper=helper, config=config)
        api_times.append(time.monotonic() - t0)
        sizes["api"] = path.stat().st_size
        run([XL, "destroy", str(domid)], what="xl destroy")
        run([XL, "restore", str(path)], what="xl restore")
        path.unlink()
        note(f"figure round {i + 1}: xl save {xl_times[-1]:.2f} s, "
             f"xensr API {api_times[-1]:.2f} s")
    xl_med = statistics.median(xl_times)
    api_med = statistics.median(api_times)
    return {"guest_mib": 128, "rounds": rounds,
            "xl_save_s": [round(t, 3) for t in xl_times],
            "api_save_s": [round(t, 3) for t in api_times],
            "xl_save_median_s": round(xl_med, 3), "api_save_median_s": round(api_med, 3),
            "ratio_api_over_xl": round(api_med / xl_med, 3), "file_bytes": sizes}


# --------------------------------------------------------------------------

SCENARIOS: List[Tuple[str, Callable[[], dict]]] = [
    ("xl_save_restore_debian", scenario_xl_save_restore_debian),
    ("xl_save_restore", scenario_xl_save_restore),
    ("api_save_xensr_nonlive", scenario_api_save_xensr_nonlive),
    ("api_save_debian_nonlive", scenario_api_save_debian_nonlive),
    ("api_save_pv_live_unsupported", scenario_api_save_pv_live_unsupported),
    ("broken_helper_detected", scenario_broken_helper_detected),
    ("xl_save_restore_pvh", scenario_xl_save_restore_pvh),
    ("api_save_xensr_live", scenario_api_save_xensr_live),
    ("api_save_debian_live", scenario_api_save_debian_live),
    ("api_cancel_precopy", scenario_api_cancel_precopy),
    ("figure", scenario_figure),
]


def selected() -> Optional[List[str]]:
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        return None
    m = re.search(r"\bxensr\.scenarios=(\S+)", cmdline)
    return m.group(1).split("+") if m else None


def main() -> int:
    only = selected()
    failures = 0
    try:
        PV.ensure_running()
    except Exception as exc:  # nothing can run without the guest
        say("FATAL", f"dom0: cannot start the guest: {exc}")
        return 2
    for name, fn in SCENARIOS:
        if only is not None and name not in only:
            continue
        say("BEGIN", name)
        t0 = time.monotonic()
        try:
            details = fn()
            status = "PASS"
        except Failed as exc:
            details = {"error": str(exc)}
            status = "FAIL"
        except Exception as exc:
            details = {"error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-1500:]}
            status = "FAIL"
        details["seconds"] = round(time.monotonic() - t0, 2)
        failures += status != "PASS"
        say("RESULT", f"{name} {status} {json.dumps(details, default=str)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
