"""7. Migration throughput: a large guest between two simulated hosts.

Host A (this process, ``xensr.migrate.migrate_domain``) sends the guest
to host B (``python -m xensr migrate-receive`` in a child process, its
simulated host in its own state directory), over loopback TCP (a
connected socket pair from a listener on 127.0.0.1) and over ssh (a real
sshd in a network namespace made for the run, tests/support/netns.py;
the ssh client runs in a second namespace).  Two guests' workloads: an
idle one (no page dirtied, so one pass over memory, the bytes of a
non-live save) and a live one (pages dirtied every precopy round).

The floor: the same transport without xensr, ``dd bs=1M`` of a saved
stream of the same guest into it, ``dd bs=1M`` out of it into a file on
the same filesystem (the receiving helper writes guest memory there).
Compared as rates (stream bytes / wall time): the migration also sends
the xl header, configuration and libxl records, and its live rounds.

After each measured migration the guest is moved back from B to A
(untimed, in this process over a socket pair) for the next one.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .harness import ROOT, CBuild, Group, Result, Series, Target, interleave

RATE_TARGET = 0.9           # xensr's MB/s over the floor's
CPU_TARGET = 0.02           # parent CPU time over the migration's wall time
LIVE_DIRTY_PAGES = 4096     # 16 MiB per precopy round


def _scratch(need: int) -> Optional[str]:
    if os.environ.get("XENSR_BENCH_TMP"):
        return os.environ["XENSR_BENCH_TMP"]
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if st.f_bavail * st.f_frsize >= need else None


def _cpu() -> "tuple[float, float]":
    """This process's (user, system) CPU seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _kids() -> float:
    """CPU seconds of the children reaped so far (and of theirs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(build: CBuild, quick: bool, reps: int) -> Result:
    from xensr.testing import SimulatedHost

    mib = 16 if quick else 1024
    res = Result("migrate-throughput",
                 "migration of a large guest between two simulated hosts vs the "
                 "same bytes through the same transport",
                 params={"guest_mib": mib, "reps": reps,
                         "live_dirty_pages_per_round": LIVE_DIRTY_PAGES})
    scratch = _scratch(5 * mib << 20)
    res.params["scratch_dir"] = scratch or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(prefix="xensr-bench-mig-", dir=scratch) as tmp:
        rig = _Rig(Path(tmp), mib, SimulatedHost)
        try:
            res.params["reference_stream_bytes"] = rig.save_reference()
            transports: Dict[str, _Transport] = {"tcp": _Tcp(rig)}
            why = _ssh_unavailable()
            net = None
            if why is None:
                from tests.support.netns import TwoHosts

                net = TwoHosts(Path(tmp) / "net")
                net.__enter__()
            try:
                if net is not None:
                    transports["ssh"] = _Ssh(rig, net)
                else:
                    res.notes.append(f"ssh variants skipped: {why}")
                variants: Dict[str, Callable[[], Dict[str, float]]] = {}
                for tname, t in transports.items():
                    variants[f"floor: dd -> {tname} -> dd"] = t.floor
                    variants[f"xensr idle guest over {tname}"] = (
                        lambda t=t: rig.migrate(t, 0))
                    variants[f"xensr live guest over {tname}"] = (
                        lambda t=t: rig.migrate(t, LIVE_DIRTY_PAGES))
                raw = interleave(variants, reps)
                for tname, t in transports.items():
                    res.params[f"{tname}_profile"] = rig.profile(t)
            finally:
                if net is not None:
                    net.__exit__(None, None, None)
        finally:
            rig.close()
    _add_figures(res, raw, list(transports))
    res.notes.append(
        "rates are stream bytes over wall time (the migration: from starting the "
        "receiver to its report; the floor: from starting both dd to their end); "
        "parent CPU is RUSAGE_SELF of this process around migrate_domain (the "
        "receiver, the helpers, ssh and dd are other processes); idle guest: no page "
        "dirtied, one pass; live guest: "
        f"{LIVE_DIRTY_PAGES} pages dirtied per precopy round; the *_profile params are "
        "one more migration under cProfile: the sender's calls of os.splice (the "
        "helper's pipe to the transport without a copy through Python) and of "
        "os.read / os.write, and the stream bytes per splice call")
    return res


def _ssh_unavailable() -> Optional[str]:
    try:
        from tests.support.netns import unavailable
    except ImportError as e:    # pragma: no cover - the tree has it
        return f"tests/support/netns.py cannot be imported: {e}"
    return unavailable()


class _Rig:
    """Hosts A and B, the guest (on A between migrations), the reference
    stream, the receiver's command."""

    def __init__(self, tmp: Path, mib: int, host_cls: Any):
        import xensr

        self.tmp = tmp
        self.helper = xensr.helper_path()
        self.a = host_cls(tmp / "host-a")
        self.b = host_cls(tmp / "host-b")
        self.domid = self.a.create_domain(mib, name="guest", dirty_pages=0)
        self.host_cpu = 0.0
        self._meter(self.a)
        self.ref = tmp / "reference.stream"
        self.out = tmp / "floor.out"
        self.nbytes = 0
        # The receivers' messages ("guest is domain N"), shown on a failure.
        self.log = open(tmp / "receiver.log", "w+")
        bindir = tmp / "bin"
        bindir.mkdir()
        # `xensr` for host B: this tree's, run by this Python.
        self.xensr = bindir / "xensr"
        self.xensr.write_text(f"#!/bin/sh\nexec {sys.executable} -m xensr \"$@\"\n")
        self.xensr.chmod(0o755)
        self.env_b = dict(os.environ, XENSR_SIMHOST_DIR=str(self.b.state_dir),
                          PYTHONPATH=ROOT, XENSR_SAVE_HELPER=self.helper)

    def close(self) -> None:
        self.log.close()
        self.a.close()
        self.b.close()

    def save_reference(self) -> int:
        """A non-live save of the guest to a file: what the floor copies."""
        import xensr

        class Suspend:
            def suspend(_self) -> bool:
                self.a.suspend(self.domid)
                return True

        fd = os.open(self.ref, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            xensr.save_domain(self.domid, fd, Suspend(), helper=self.helper, env=self.a.env)
        finally:
            os.close(fd)
        self.a.resume(self.domid)
        self.nbytes = self.ref.stat().st_size
        return self.nbytes

    def migrate(self, t: "_Transport", dirty: int,
                wrap: Optional[Callable[[Callable[[], Any]], Any]] = None) -> Dict[str, float]:
        """Guest A -> B over ``t`` (timed), then back (untimed)."""
        from xensr.migrate import migrate_domain

        self.a.update_domain(self.domid, dirty_pages=dirty)
        self.host_cpu = 0.0
        u0, s0 = _cpu()
        k0 = _kids()
        t0 = time.perf_counter()
        with t.connect() as fds:
            def go() -> Any:
                return migrate_domain(self.a, self.domid, fds.pair, helper=self.helper,
                                      env=self.a.env)
            r = wrap(go) if wrap is not None else go()
        wall = time.perf_counter() - t0
        u1, s1 = _cpu()
        kids = _kids() - k0
        self.move_back()
        user, system = u1 - u0, s1 - s0
        cpu = user + system
        # The simulated host's own work in this process (destroying the
        # source frees its memory file): not the stream's.
        net = cpu - self.host_cpu
        return {"wall_ms": wall * 1e3, "mbps": r.stream_bytes / wall / 1e6,
                "parent_cpu_ms": cpu * 1e3, "parent_user_ms": user * 1e3,
                "parent_sys_ms": system * 1e3, "host_cpu_ms": self.host_cpu * 1e3,
                "parent_cpu_frac": net / wall,
                "parent_cpu_ns_per_byte": net * 1e9 / r.stream_bytes,
                "children_cpu_ms": kids * 1e3,
                "stream_mib": r.stream_bytes / 2**20}

    def _meter(self, host: Any) -> None:
        """host's toolstack calls add their CPU time to self.host_cpu."""
        for name in ("destroy", "suspend", "rename", "domain_config", "domain_name"):
            fn = getattr(host, name)

            def metered(*a: Any, _fn: Any = fn, **kw: Any) -> Any:
                u0, s0 = _cpu()
                try:
                    return _fn(*a, **kw)
                finally:
                    u1, s1 = _cpu()
                    self.host_cpu += (u1 - u0) + (s1 - s0)
            setattr(host, name, metered)

    def move_back(self) -> None:
        from xensr.migrate import migrate_domain, receive_domain

        s, r = socket.socketpair()
        err: List[BaseException] = []

        def recv() -> None:
            try:
                receive_domain(self.a, r.fileno(), r.fileno(), helper=self.helper,
                               env=self.a.env)
            except BaseException as e:
                err.append(e)

        th = threading.Thread(target=recv, daemon=True)
        th.start()
        try:
            dom = self.b.lookup("guest")
            self.b.update_domain(dom, dirty_pages=0)
            migrate_domain(self.b, dom, s, helper=self.helper, env=self.b.env)
        finally:
            s.close()
            th.join(600)
            r.close()
        if err:
            raise err[0]
        self.domid = self.a.lookup("guest")

    def profile(self, t: "_Transport") -> Dict[str, Any]:
        """One idle-guest migration under cProfile: the data path's calls."""
        prof = cProfile.Profile()
        fig = self.migrate(t, 0, wrap=lambda go: prof.runcall(go))
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        calls: Dict[str, int] = {}
        for (_, _, fn), (_, ncalls, _, _, _) in stats.items():
            for name in ("splice", "read", "write"):
                if fn in (f"<built-in method posix.{name}>", f"<built-in method os.{name}>"):
                    calls[name] = calls.get(name, 0) + ncalls
        nbytes = fig["stream_mib"] * 2**20
        return {"splice_calls": calls.get("splice", 0), "read_calls": calls.get("read", 0),
                "write_calls": calls.get("write", 0),
                "bytes_per_splice": round(nbytes / calls["splice"]) if calls.get("splice")
                else 0}


class _Fds:
    """A connection of the transport: ``pair`` for migrate_domain."""

    def __init__(self, pair: Any, close: Callable[[], None]):
        self.pair = pair
        self._close = close

    def __enter__(self) -> "_Fds":
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


class _Transport:
    def connect(self) -> _Fds:
        raise NotImplementedError

    def floor(self) -> Dict[str, float]:
        raise NotImplementedError


def _check(proc: "subprocess.Popen[bytes]", what: str, log: Any = None) -> None:
    rc = proc.wait(600)
    if rc:
        tail = ""
        if log is not None:
            log.seek(0)
            tail = ":\n" + log.read()[-2000:]
        raise RuntimeError(f"{what} exited with status {rc}{tail}")


class _Tcp(_Transport):
    def __init__(self, rig: _Rig):
        self.rig = rig

    def _pair(self) -> "tuple[socket.socket, socket.socket]":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            c = socket.create_connection(ls.getsockname())
            s, _ = ls.accept()
        return c, s

    def connect(self) -> _Fds:
        c, s = self._pair()
        try:
            recv = subprocess.Popen([sys.executable, "-m", "xensr", "migrate-receive"],
                                    stdin=s, stdout=s, stderr=self.rig.log, env=self.rig.env_b,
                                    cwd=ROOT)
        finally:
            s.close()

        def close() -> None:
            c.close()
            _check(recv, "xensr migrate-receive", self.rig.log)

        return _Fds(c, close)

    def floor(self) -> Dict[str, float]:
        rig = self.rig
        c, s = self._pair()
        k0 = _kids()
        t0 = time.perf_counter()
        try:
            sink = subprocess.Popen(["dd", f"of={rig.out}", "bs=1M", "status=none"], stdin=s)
            src = subprocess.Popen(["dd", f"if={rig.ref}", "bs=1M", "status=none"], stdout=c)
        finally:
            c.close()
            s.close()
        _check(src, "dd (sender)")
        _check(sink, "dd (receiver)")
        return _floor_result(rig, time.perf_counter() - t0, _kids() - k0)


def _floor_result(rig: Any, wall: float, kids: float) -> Dict[str, float]:
    """A floor run's figures, once its copy is checked whole (and removed)."""
    got = rig.out.stat().st_size
    rig.out.unlink()
    assert got == rig.nbytes, (got, rig.nbytes)
    return {"wall_ms": wall * 1e3, "mbps": rig.nbytes / wall / 1e6,
            "children_cpu_ms": kids * 1e3}


class _Ssh(_Transport):
    """ssh from namespace A to the sshd in namespace B."""

    def __init__(self, rig: _Rig, net: Any):
        from tests.support import netns

        self.rig = rig
        self.net = net
        net.start_sshd({"PATH": f"{rig.xensr.parent}:/usr/sbin:/usr/bin:/sbin:/bin",
                        "PYTHONPATH": ROOT, "XENSR_SIMHOST_DIR": str(rig.b.state_dir),
                        "XENSR_SAVE_HELPER": rig.helper})
        self.ssh = (f"nsenter --net={netns._NETNS_DIR}/{net.ns_a} -- {net.ssh_command}")

    def connect(self) -> _Fds:
        from xensr.migrate import CommandTransport

        t = CommandTransport.ssh(self.net.addr_b, ssh_command=self.ssh, program="xensr",
                                 wait_timeout=60, stderr=self.rig.log)

        def close() -> None:
            rc = t.close()
            if rc:
                self.rig.log.seek(0)
                raise RuntimeError(f"ssh ... xensr migrate-receive exited with status {rc}:\n"
                                   + self.rig.log.read()[-2000:])

        return _Fds(t, close)

    def floor(self) -> Dict[str, float]:
        rig = self.rig
        cmd = (f"dd if={shlex.quote(str(rig.ref))} bs=1M status=none | {self.ssh} "
               f"{self.net.addr_b} dd of={shlex.quote(str(rig.out))} bs=1M status=none")
        k0 = _kids()
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", cmd], check=True, timeout=600)
        return _floor_result(rig, time.perf_counter() - t0, _kids() - k0)


def _add_figures(res: Result, raw: Dict[str, Dict[str, List[float]]],
                 transports: List[str]) -> None:
    def series(name: str, key: str, unit: str, hib: bool = False) -> Series:
        return Series(name, unit, raw[name][key], higher_is_better=hib)

    for t in transports:
        floor = f"floor: dd -> {t} -> dd"
        names = [f"xensr idle guest over {t}", f"xensr live guest over {t}"]
        rate = Group(f"over {t}: throughput", [series(floor, "mbps", "MB/s", True)]
                     + [series(n, "mbps", "MB/s", True) for n in names], baseline=floor)
        wall = Group(f"over {t}: wall time",
                     [series(floor, "wall_ms", "ms")] + [series(n, "wall_ms", "ms")
                                                         for n in names])
        cpu = Group(f"over {t}: parent CPU (RUSAGE_SELF)",
                    [Series(f"{n}: CPU", "ms", raw[n]["parent_cpu_ms"]) for n in names]
                    + [Series(f"{n}: user", "ms", raw[n]["parent_user_ms"]) for n in names]
                    + [Series(f"{n}: system", "ms", raw[n]["parent_sys_ms"]) for n in names]
                    + [Series(f"{n}: simulated host's calls", "ms", raw[n]["host_cpu_ms"])
                       for n in names]
                    + [Series(f"{n}: CPU / wall", "fraction", raw[n]["parent_cpu_frac"])
                       for n in names]
                    + [Series(f"{n}: CPU per stream byte", "ns/byte",
                              raw[n]["parent_cpu_ns_per_byte"]) for n in names])
        kids = Group(f"over {t}: CPU of the other processes on this side (RUSAGE_CHILDREN)",
                     [series(floor, "children_cpu_ms", "ms")]
                     + [series(n, "children_cpu_ms", "ms") for n in names], baseline=floor)
        size = Group(f"over {t}: stream size", [series(n, "stream_mib", "MiB") for n in names])
        res.groups += [rate, wall, cpu, kids, size]
        for n in names:
            res.targets.append(Target(f"{n}: MB/s over the floor's", rate.ratio(n),
                                      RATE_TARGET, ">="))
            res.targets.append(Target(f"{n}: parent CPU / wall",
                                      cpu.get(f"{n}: CPU / wall").median, CPU_TARGET, "<="))
