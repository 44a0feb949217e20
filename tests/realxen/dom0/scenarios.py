"""The scenarios, run in dom0 on real Xen 4.17 or 4.20 (python3, stdlib + xensr).

Usage (from dom0's init): ``python3 scenarios.py PAYLOAD_DIR``.  Each scenario
prints ``XENSR-BEGIN name`` and then exactly one
``XENSR-RESULT name PASS|FAIL {json details}`` on the console; the host
side asserts those markers.  ``xensr.scenarios=a+b`` on dom0's kernel
command line runs only the named scenarios.

The guests (one PV, one PVH; 128 MiB each) print ``XENSR-TICK n uptime``
on their console each second; xenconsoled logs it to a file, where the
counter must carry on across a save and restore (a rebooted guest would
start again from 1).
"""

from __future__ import annotations

import asyncio
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
# The running hypervisor's release (dom0's init reads it from sysfs).
XEN_RELEASE = os.environ.get("XEN_RELEASE", "4.17")
XEN_BIN = Path(f"/usr/lib/xen-{XEN_RELEASE}/bin")
XL = str(XEN_BIN / "xl")
# xl create / restore get -e: no background process waiting for the
# domain's death.  That monitor is not what is tested here (its daemonizing
# child was seen to segfault, before the QEMU CPU model dropped XSAVE).
DEBIAN_HELPER = str(XEN_BIN / "libxl-save-helper")
CONSOLE_DIR = Path("/var/log/xen/console")
WORK = Path("/tmp")  # tmpfs: save files live in dom0's memory
BROKEN_HELPER = Path("/run/xensr-broken-helper")
EXPORT = Path("/export")  # this boot's export disk, for the next release's boot
IMPORT = Path("/import")  # an earlier boot's export disk, read-only
CMD_TIMEOUT = 90  # below the host's 120 s console idle timeout

Tick = Tuple[int, float]


class Failed(Exception):
    """A scenario's check failed; the message says what was seen."""


class Skipped(Exception):
    """A scenario does not apply to this boot; the message says why."""


def say(kind: str, text: str) -> None:
    print(f"XENSR-{kind} {text}", flush=True)


def note(text: str) -> None:
    say("LOG", text)


def tail(text: str, n: int = 12) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def xl_errors(text: str, n: int = 4) -> str:
    """xl's error lines (libxl says there why a helper failed), else its tail."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines()
             if ": error: " in ln]
    return " | ".join(lines[:n]) if lines else tail(text)


def stuck(pid: int) -> str:
    """Where a process (and its children) wait: for a timeout's report."""
    out = []
    pids = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(k) for k in kids]
    except OSError:
        pass
    for p in pids:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
            wchan = Path(f"/proc/{p}/wchan").read_text()
            stack = Path(f"/proc/{p}/stack").read_text().split("\n")[:6]
        except OSError:
            continue
        out.append(f"[{p}] {cmd} wchan={wchan} stack={'/'.join(x.split()[-1] for x in stack if x)}")
    return "; ".join(out)


def run(cmd: List[str], *, env: Optional[Dict[str, str]] = None, timeout: float = CMD_TIMEOUT,
        check: bool = True, what: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a command, stdout and stderr together, stdin from /dev/null."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=full_env) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            where = stuck(proc.pid)
            proc.kill()
            out, _ = proc.communicate()
            raise Failed(f"{what or ' '.join(cmd)}: no end after {timeout:.0f} s "
                         f"({where}): {tail(out.decode(errors='replace'))}") from None
    r = subprocess.CompletedProcess(cmd, proc.returncode, out.decode(errors="replace"))
    if check and r.returncode != 0:
        raise Failed(f"{what or ' '.join(cmd)} exited with status {r.returncode}: "
                     f"{tail(r.stdout)}")
    return r


# --------------------------------------------------------------------------
# The host: xensr.realhost.XenHost (xl; xenstore and libxenctrl through
# Debian's xen.lowlevel bindings)

HOST_OBJ = None


def host():
    """The XenHost every scenario uses (xl of the running release)."""
    global HOST_OBJ
    if HOST_OBJ is None:
        from xensr.realhost import XenHost

        HOST_OBJ = XenHost(xl=XL)
    return HOST_OBJ


def dom_state(domid: int) -> str:
    """``running``, ``paused``, ``dying``, ``shutdown(REASON)`` or ``gone``."""
    from xensr import DomainNotFound

    try:
        return host().info(domid).state
    except DomainNotFound:
        return "gone"


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
        from xensr import DomainNotFound

        try:
            return host().lookup(self.name)
        except DomainNotFound:
            return None

    def state(self) -> str:
        d = self.domid()
        return "gone" if d is None else dom_state(d)

    def create(self) -> None:
        self.write_config()
        t0 = time.monotonic()
        run([XL, "create", "-e", str(self.cfg)], what="xl create")
        self.wait_tick(lambda n, up: True, 0, 90)
        note(f"guest {self.name} created as domain {self.domid()} in "
             f"{time.monotonic() - t0:.1f} s")

    def destroy(self) -> None:
        d = self.domid()
        if d is not None:
            host().destroy(d)

    def ensure_running(self) -> None:
        """Make sure the guest exists and runs (recreate it if a scenario lost it)."""
        d = self.domid()
        if d is not None and dom_state(d) == "running":
            return
        if d is not None:
            note(f"guest domain {d} is {dom_state(d)}: destroying and recreating it")
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
        return host().domain_config(self.domid()).decode()


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


def inspect(path: Path, name: str) -> dict:
    """``xensr inspect --json`` on a save file: it must accept it, and the
    configuration it carries must be the guest's."""
    r = run([sys.executable, "-m", "xensr", "inspect", "--json", str(path)],
            what="xensr inspect", check=False)
    if r.returncode != 0:
        raise Failed(f"xensr inspect rejects the save file: {tail(r.stdout)}")
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        raise Failed(f"xensr inspect --json printed no JSON: {tail(r.stdout)}") from None
    text = json.dumps(doc)
    if f'"{name}"' not in text and f'\\"{name}\\"' not in text:
        raise Failed(f"the save file's configuration does not name {name}: {text[:300]}")
    return {k: doc[k] for k in list(doc)[:12] if not isinstance(doc[k], (list, dict))}


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
                     f"{r.returncode}: {xl_errors(r.stdout)}")
    first_save = first_helper_line(r.stdout, "xl save")
    check_helper_line(first_save, "save", xensr_expected)
    if g.domid() is not None:
        raise Failed("the guest still exists after xl save")
    start = g.log_size()
    t0 = time.monotonic()
    r2 = run([XL, "-vvv", "restore", "-e", str(path)], env=env, check=False)
    t_restore = time.monotonic() - t0
    if r2.returncode != 0:
        raise Failed(f"xl restore with LIBXL_SAVE_HELPER={helper} exited with status "
                     f"{r2.returncode}: {xl_errors(r2.stdout)}")
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
    """Callbacks whose suspend is XenHost.suspend: xenstore control/shutdown,
    then the hypervisor's word that the domain shut down for suspend."""

    def __init__(self, domid: int, timeout: float = 60.0) -> None:
        self.domid = domid
        self.timeout = timeout
        self.suspended_after: Optional[float] = None
        self.calls: List[str] = []

    def suspend(self) -> bool:
        from xensr import ToolstackError

        self.calls.append("suspend")
        t0 = time.monotonic()
        try:
            host().suspend(self.domid, self.timeout)
        except ToolstackError as exc:
            note(f"suspend: {type(exc).__name__}: {exc}")
            return False
        self.suspended_after = time.monotonic() - t0
        return True

    def switch_qemu_logdirty(self, domid: int, enable: int) -> None:
        # A PV guest has no device model; libxc does not call this for PV.
        self.calls.append(f"switch_qemu_logdirty({domid},{enable})")


def api_save_to_file(domid: int, path: Path, callbacks, *, live: bool, helper: str,
                     config: str):
    """Save ``domid`` with the xensr API into an xl save file at ``path``
    (``xensr.save_domain_to_file``: xl header with ``config``, libxl
    records around the helper's libxc stream)."""
    import xensr

    return xensr.save_domain_to_file(domid, path, callbacks, config=config, live=live,
                                     helper=helper, timeout=CMD_TIMEOUT)


def api_save_restore(g: Guest, helper: str, live: bool) -> dict:
    g.ensure_running()
    before = g.ready()
    domid = g.domid()
    config = g.config_json()
    path = WORK / "api.save"
    retried = None
    for attempt in (1, 2):
        cb = XenstoreSuspend(domid)
        t0 = time.monotonic()
        try:
            result = api_save_to_file(domid, path, cb, live=live, helper=helper,
                                      config=config)
            break
        except Exception as exc:
            # libxenguest once failed a PVH live save on a page it could not
            # map ("Mapping of pfn ... failed -22", Debian's helper), before
            # the QEMU CPU model dropped XSAVE and maybe for that reason.
            # The guest runs on; one more try, recorded in the details.
            text = str(exc)
            if (attempt == 2 or not live or type(exc).__name__ != "SaveRestoreError"
                    or "Mapping of pfn" not in text or dom_state(domid) != "running"):
                raise
            retried = [ln.strip() for ln in text.splitlines() if "Mapping of pfn" in ln][0]
            note(f"live save failed inside libxenguest ({retried}); once more")
    t_save = time.monotonic() - t0
    if cb.suspended_after is None:
        raise Failed(f"the save returned ({result!r}) but the suspend callback never "
                     f"saw the guest suspend (calls: {cb.calls})")
    state = dom_state(domid)
    if state != "shutdown(suspend)":
        raise Failed(f"after the save the domain is {state}, not shut down for suspend")
    run([XL, "destroy", str(domid)], what="xl destroy")
    start = g.log_size()
    t0 = time.monotonic()
    r = run([XL, "-vvv", "restore", "-e", str(path)], check=False)
    t_restore = time.monotonic() - t0
    if r.returncode != 0:
        raise Failed(f"xl restore of the file saved through the API exited with status "
                     f"{r.returncode}: {xl_errors(r.stdout)}")
    cont = g.carries_on(before, start)
    size = path.stat().st_size
    t0 = time.monotonic()
    summary = inspect(path, g.name)
    summary["inspect_s"] = round(time.monotonic() - t0, 2)
    path.unlink()
    return {"save_s": round(t_save, 2), "restore_s": round(t_restore, 2),
            "suspend_s": round(cb.suspended_after, 3), "file_bytes": size,
            "inspect": summary,
            "helper": result.helper, "helper_elapsed_s": round(result.elapsed, 2),
            "callbacks": dict(result.callbacks), "frames": result.frames,
            "retried_after": retried, "counter": cont}


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
    state = dom_state(domid)
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


class AbortDuringPrecopy(XenstoreSuspend):
    """Callbacks that stop the save once precopy pages are flowing.

    libxenguest reports progress every 4 MiB sent in a round (done, total);
    the first report with 0 < done < total is in the middle of round one.
    ``on_pages`` is called then (once).
    """

    def __init__(self, domid: int, on_pages: Callable[[], None]) -> None:
        super().__init__(domid)
        self.on_pages = on_pages
        self.reports: List[Tuple[str, int, int]] = []
        self.fired_at: Optional[Tuple[str, int, int]] = None

    def progress(self, context: str, doing_what: str, done: int, total: int) -> None:
        self.reports.append((doing_what, done, total))
        if self.fired_at is None and 0 < done < total:
            self.fired_at = (doing_what, done, total)
            self.on_pages()


def capture_logs() -> LogTail:
    """Collect xensr's log records (the helper's log lines among them)."""
    logs = LogTail()
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(logging.DEBUG)
    return logs


def check_after_cancel(domid: int, cb: AbortDuringPrecopy, logs: LogTail, details: dict) -> dict:
    logging.getLogger().removeHandler(logs)
    details.update({"aborted_at": cb.fired_at, "progress_reports": len(cb.reports),
                    "callback_calls": cb.calls})
    if cb.fired_at is None:
        raise Failed(f"no progress report in the middle of a precopy round: {cb.reports[:6]}")
    if "suspend" in cb.calls:
        raise Failed(f"the guest was asked to suspend during a cancelled precopy: {details}")
    unwound = [ln for ln in logs.lines if "complete r=-1" in ln]
    details["helper_unwound"] = unwound[:1]
    if not unwound:
        raise Failed("the helper did not unwind through libxenguest (no 'complete r=-1' "
                     f"in its log); its last lines: {logs.lines[-6:]}")
    state = dom_state(domid)
    if state != "running":
        raise Failed(f"after the cancelled save the guest is {state}")
    left = helper_processes()
    if left:
        raise Failed(f"helper processes left after the cancel: {left}")
    details["counter"] = PVH.advances()
    return details


def scenario_api_cancel_precopy() -> dict:
    """Blocking API: Operation.abort() mid-precopy; run() raises Aborted."""
    import xensr

    PVH.ensure_running()
    PVH.ready()
    domid = PVH.domid()
    path = WORK / "cancel.save"
    logs = capture_logs()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        holder: List = []
        cb = AbortDuringPrecopy(domid, lambda: holder[0].abort())
        op = xensr.SaveOperation(domid, fd, cb, live=True, helper=xensr_helper(),
                                 timeout=CMD_TIMEOUT)
        holder.append(op)
        t0 = time.monotonic()
        try:
            res = op.run()
        except xensr.Aborted as exc:
            details = {"raised": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        except xensr.XensrError as exc:
            logging.getLogger().removeHandler(logs)
            raise Failed(f"the aborted save raised {type(exc).__name__}: {exc}, "
                         "not Aborted") from None
        else:
            logging.getLogger().removeHandler(logs)
            raise Failed(f"the aborted save returned {res!r}")
        details["seconds_to_end"] = round(time.monotonic() - t0, 2)
        details["helper_returncode"] = op.returncode
    finally:
        os.close(fd)
        path.unlink()
    check_after_cancel(domid, cb, logs, details)
    # SIGTERM made libxenguest fail and the helper complete: status 0, not a kill.
    if details["helper_returncode"] != 0:
        raise Failed(f"the helper ended with status {details['helper_returncode']} "
                     "after SIGTERM, not by completing")
    return details


def scenario_api_cancel_precopy_aio() -> dict:
    """asyncio: cancelling the save task mid-precopy raises CancelledError
    after the helper is gone."""
    import xensr.aio

    PVH.ensure_running()
    PVH.ready()
    domid = PVH.domid()
    path = WORK / "cancel-aio.save"
    logs = capture_logs()

    async def go() -> Tuple[dict, AbortDuringPrecopy]:
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        cb = AbortDuringPrecopy(domid, fired.set)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            task = loop.create_task(xensr.aio.save_domain(
                domid, fd, cb, live=True, helper=xensr_helper(), timeout=CMD_TIMEOUT))
            waiter = loop.create_task(fired.wait())
            await asyncio.wait([task, waiter], timeout=90,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                raise Failed(f"the live save ended before it could be cancelled: "
                             f"{task.exception() or task.result()!r}")
            if not fired.is_set():
                task.cancel()
                raise Failed("no progress in the middle of a precopy round within 90 s")
            t0 = time.monotonic()
            task.cancel()
            try:
                res = await task
            except asyncio.CancelledError:
                details = {"raised": "CancelledError"}
            else:
                raise Failed(f"the cancelled save returned {res!r}")
            details["seconds_to_end"] = round(time.monotonic() - t0, 2)
            return details, cb
        finally:
            os.close(fd)
            path.unlink()

    try:
        details, cb = asyncio.run(go())
    except BaseException:
        logging.getLogger().removeHandler(logs)
        raise
    return check_after_cancel(domid, cb, logs, details)


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
    state = dom_state(domid)
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
        run([XL, "restore", "-e", str(path)], what="xl restore")
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
        run([XL, "restore", "-e", str(path)], what="xl restore")
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
# XenHost on its own: suspend, then resume with suspend-cancel


def suspend_resume(g: Guest, bindings: Optional[str]) -> dict:
    """XenHost.suspend, then XenHost.resume: the guest runs on (its counter
    advances, it was not restarted)."""
    from xensr.realhost import XenHost

    g.ensure_running()
    g.ready(3)
    h = XenHost(xl=XL, bindings=bindings)
    try:
        domid = g.domid()
        out = {"bindings": h.bindings.name, "domain_type": h.domain_type(domid),
               "domain_name": h.domain_name(domid)}
        t0 = time.monotonic()
        h.suspend(domid)
        out["suspend_s"] = round(time.monotonic() - t0, 3)
        out["after_suspend"] = h.info(domid).state
        if out["after_suspend"] != "shutdown(suspend)":
            raise Failed(f"after XenHost.suspend the domain is {out['after_suspend']}")
        h.resume(domid)
        out["after_resume"] = h.info(domid).state
        out["same_domid"] = g.domid() == domid
        out["counter"] = g.advances()
    finally:
        h.close()
    return out


def scenario_xenhost_suspend_resume() -> dict:
    """The default bindings (Debian's xen.lowlevel for this Python)."""
    return suspend_resume(PV, None)


def scenario_xenhost_suspend_resume_ctypes() -> dict:
    """The fallback: libxenctrl, libxenguest and libxenstore through ctypes."""
    return suspend_resume(PV, "ctypes")


class AbortAfterSuspend(XenstoreSuspend):
    """Callbacks that stop a non-live save once pages flow after the suspend."""

    def __init__(self, domid: int, on_pages: Callable[[], None]) -> None:
        super().__init__(domid)
        self.on_pages = on_pages
        self.fired_at: Optional[Tuple[str, int, int]] = None

    def progress(self, context: str, doing_what: str, done: int, total: int) -> None:
        if self.fired_at is None and self.suspended_after is not None and 0 < done < total:
            self.fired_at = (doing_what, done, total)
            self.on_pages()


def scenario_api_save_failed_after_suspend_resumed() -> dict:
    """A save that fails after the guest suspended (cancelled while its
    pages are sent): the guest stays suspended until XenHost.resume
    (suspend-cancel), then runs on."""
    import xensr

    PV.ensure_running()
    PV.ready(3)
    domid = PV.domid()
    path = WORK / "failed.save"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        holder: List = []
        cb = AbortAfterSuspend(domid, lambda: holder[0].abort())
        op = xensr.SaveOperation(domid, fd, cb, live=False, helper=xensr_helper(),
                                 timeout=CMD_TIMEOUT)
        holder.append(op)
        try:
            res = op.run()
        except xensr.XensrError as exc:
            out = {"raised": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        else:
            raise Failed(f"the save cancelled after the suspend returned {res!r}")
    finally:
        os.close(fd)
        path.unlink()
    out.update({"aborted_at": cb.fired_at, "callback_calls": cb.calls,
                "helper_returncode": op.returncode})
    if cb.fired_at is None or cb.suspended_after is None:
        raise Failed(f"the save was not cancelled after the suspend: {out}")
    out["after_failure"] = dom_state(domid)
    if out["after_failure"] != "shutdown(suspend)":
        raise Failed(f"after the failed save the domain is {out['after_failure']}, "
                     "not suspended")
    host().resume(domid)
    out["after_resume"] = dom_state(domid)
    if out["after_resume"] != "running":
        raise Failed(f"after XenHost.resume the domain is {out['after_resume']}")
    out["counter"] = PV.advances()
    return out


# --------------------------------------------------------------------------
# Across releases: a file saved here is restored in the next release's boot


def scenario_export_for_next_release() -> dict:
    """Stock `xl save` of the running PV guest onto the export disk, with
    the guest's last counter, for the next release's boot to restore."""
    if not os.path.ismount(EXPORT):
        raise Skipped("no export disk (no later release boots after this one)")
    PV.ensure_running()
    before = PV.ready()
    path = EXPORT / f"xl-{XEN_RELEASE}.save"
    run([XL, "save", PV.name, str(path)], what="xl save (export)")
    meta = {"release": XEN_RELEASE, "file": path.name, "bytes": path.stat().st_size,
            "counter": list(before), "guest": PV.name}
    (EXPORT / "export.json").write_text(json.dumps(meta))
    run(["sync"], what="sync")
    return meta


def scenario_import_from_older_release() -> dict:
    """`xl restore` here of the xl save file an older release's boot wrote:
    the guest's counter carries on from where it was in that boot."""
    note_file = IMPORT / "export.json"
    if not note_file.exists():
        raise Skipped("no imported disk (no older release booted before this one)")
    meta = json.loads(note_file.read_text())
    if meta["release"] == XEN_RELEASE:
        raise Failed(f"the imported file was saved on {meta['release']}, this is the same "
                     "release")
    PV.destroy()  # its name is the imported guest's
    start = PV.log_size()
    r = run([XL, "-vvv", "restore", "-e", str(IMPORT / meta["file"])], check=False)
    if r.returncode != 0:
        raise Failed(f"xl restore on {XEN_RELEASE} of the file saved on {meta['release']} "
                     f"exited with status {r.returncode}: {xl_errors(r.stdout)}")
    cont = PV.carries_on(tuple(meta["counter"]), start)
    domid = PV.domid()
    PV.destroy()  # the scenarios after this one get a guest of this boot
    return {"saved_on": meta["release"], "restored_on": XEN_RELEASE,
            "file_bytes": meta["bytes"], "domid": domid, "counter": cont}


# --------------------------------------------------------------------------

# A canary for the emulated CPU: processes that fork and hash a buffer,
# three at once on dom0's two vCPUs.  Every hash must come out the same;
# when the CPU's extended state is not kept across context switches
# (seen with XSAVE under TCG), they do not, and everything else fails at
# random (segfaulting xl, corrupt copies).
HASHER = r"""
import hashlib, os, sys
buf = bytearray(hashlib.sha256(b"xensr").digest() * (1 << 18))
want = hashlib.sha256(buf).hexdigest()
bad = 0
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        for i in range(0, len(buf), 4096 * 5):
            buf[i] ^= 0xFF
            buf[i] ^= 0xFF
        os._exit(0 if hashlib.sha256(buf).hexdigest() == want else 3)
    _, st = os.waitpid(pid, 0)
    bad += st != 0
    bad += hashlib.sha256(buf).hexdigest() != want
print(bad)
"""


def scenario_dom0_cpu_sanity() -> dict:
    procs = [subprocess.Popen([sys.executable, "-c", HASHER, "4"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(3)]
    outs = [p.communicate(timeout=CMD_TIMEOUT)[0].decode(errors="replace").strip()
            for p in procs]
    if any(p.returncode != 0 for p in procs) or any(o != "0" for o in outs):
        raise Failed("dom0's CPU loses state across context switches: of 3 x 4 forked "
                     f"hashes of the same buffer, wrong ones per process: {outs} "
                     f"(exit {[p.returncode for p in procs]})")
    return {"processes": 3, "hashes_each": 8}


SCENARIOS: List[Tuple[str, Callable[[], dict]]] = [
    ("dom0_cpu_sanity", scenario_dom0_cpu_sanity),
    # PV guest
    ("xl_save_restore_debian", scenario_xl_save_restore_debian),
    ("xl_save_restore", scenario_xl_save_restore),
    ("api_save_xensr_nonlive", scenario_api_save_xensr_nonlive),
    ("api_save_debian_nonlive", scenario_api_save_debian_nonlive),
    ("api_save_pv_live_unsupported", scenario_api_save_pv_live_unsupported),
    ("broken_helper_detected", scenario_broken_helper_detected),
    ("xenhost_suspend_resume", scenario_xenhost_suspend_resume),
    ("xenhost_suspend_resume_ctypes", scenario_xenhost_suspend_resume_ctypes),
    ("api_save_failed_after_suspend_resumed", scenario_api_save_failed_after_suspend_resumed),
    # PVH guest; the live saves after the cancelled ones also show that the
    # cancels left the domain's log-dirty mode off
    ("xl_save_restore_pvh", scenario_xl_save_restore_pvh),
    ("api_cancel_precopy", scenario_api_cancel_precopy),
    ("api_cancel_precopy_aio", scenario_api_cancel_precopy_aio),
    ("api_save_xensr_live", scenario_api_save_xensr_live),
    ("api_save_debian_live", scenario_api_save_debian_live),
    # PV guest alone
    ("figure", scenario_figure),
    # across releases (the PV guest)
    ("import_from_older_release", scenario_import_from_older_release),
    ("export_for_next_release", scenario_export_for_next_release),
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
        except Skipped as exc:
            details = {"reason": str(exc)}
            status = "SKIP"
        except Exception as exc:
            details = {"error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-1500:]}
            status = "FAIL"
        details["seconds"] = round(time.monotonic() - t0, 2)
        failures += status == "FAIL"
        say("RESULT", f"{name} {status} {json.dumps(details, default=str)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
