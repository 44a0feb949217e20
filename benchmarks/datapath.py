"""5. Data path: a non-live save of a large simulated domain.

The helper writes the migration stream straight to the io fd; the parent
only serves the control pipe.  Compared with copying the same number of
bytes with no helper (``dd bs=1M`` from a file holding a stream of the
same domain), to a file and into a pipe drained by ``wc -c`` (a separate
process, so that draining costs the parent nothing, and a check of the
byte count).  The parent's CPU time (getrusage RUSAGE_SELF, all threads)
is read around each save; opening the output, starting the drain and
removing the output file afterwards are outside the measured span.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

from . import xapi
from .harness import CBuild, Group, Result, Series, Target, interleave

CPU_TARGET = 0.02  # parent CPU time over the save's wall time
NEED_BYTES = 4 << 30  # domain memory, reference stream, one output


def _scratch() -> "str | None":
    """Where the domain, the reference stream and the outputs live.

    XENSR_BENCH_TMP if set; else /dev/shm when it is a tmpfs with room, so
    that disk write-back (of this run or of anything else on the machine)
    does not land in the middle of a timed copy; else the default temp dir.
    """
    if os.environ.get("XENSR_BENCH_TMP"):
        return os.environ["XENSR_BENCH_TMP"]
    try:
        st = os.statvfs("/dev/shm")
        with open("/proc/mounts") as f:
            tmpfs = any(line.split()[1] == "/dev/shm" and line.split()[2] == "tmpfs"
                        for line in f)
    except OSError:
        return None
    if tmpfs and st.f_bavail * st.f_frsize >= NEED_BYTES:
        return "/dev/shm"
    return None


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(build: CBuild, quick: bool, reps: int) -> Result:
    from xensr.api import helper_path
    from xensr.testing import SimulatedHost

    cparent = build.cparent()
    helper = helper_path()

    mib = 64 if quick else 1024
    res = Result("datapath", "non-live save through the helper vs a plain copy",
                 params={"domain_mib": mib, "reps": reps})
    scratch = _scratch()
    res.params["scratch_dir"] = scratch or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(prefix="xensr-bench-data-", dir=scratch) as tmp, \
            SimulatedHost(os.path.join(tmp, "host"), auto_suspend=True) as host:
        domid = host.create_domain(mib)
        bench = _Copies(tmp, dict(host.env), domid, cparent, helper)
        res.params["stream_bytes"] = bench.save_reference()
        os.sync()  # no write-back of the set-up during the timed copies
        raw = interleave(bench.variants(), reps)
    _add_figures(res, raw)
    res.notes.append(
        "xensr rows run xensr's own helper against the simulated host, and so do the "
        "'C parent' rows, where the benchmark's C parent (poll + read, as the "
        "round-trip floor) serves the same helper: the floor for the parent's CPU; "
        "the dd rows copy "
        "a stream of the same domain saved once beforehand (so the same number of "
        "bytes); pipes are drained by `wc -c`, which also checks the byte count; "
        f"'near zero' parent CPU is taken as at most {CPU_TARGET:.0%} of the wall time; "
        "the domain, the reference stream and the output files are in scratch_dir "
        "(a tmpfs when one has room: disk write-back made file timings erratic)")
    return res


_Pipe = Tuple[int, "subprocess.Popen[bytes]"]  # our write end, the `wc -c` draining it


class _Copies:
    """The variants: a save (xensr, or the C parent) or a dd copy of the
    reference stream, into a file or a drained pipe."""

    def __init__(self, tmp: str, env: Dict[str, str], domid: int, cparent: str,
                 helper: str):
        self.env = env
        self.domid = domid
        self.cparent = cparent
        self.helper = helper
        self.ref = os.path.join(tmp, "reference.stream")
        self.out_path = os.path.join(tmp, "out.stream")
        self.nbytes = 0
        self.c_figures: Dict[str, float] = {}

    def save_reference(self) -> int:
        """Save the domain once to the reference file: what dd copies, and
        the byte count every variant must produce."""
        fd = os.open(self.ref, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            xapi.save_blocking(fd, None, helper=None, env=self.env, domid=self.domid)
        finally:
            os.close(fd)
        self.nbytes = os.path.getsize(self.ref)
        return self.nbytes

    def variants(self) -> Dict[str, Callable[[], Dict[str, float]]]:
        file, pipe = self._file, self._pipe
        return {
            "xensr save -> file": lambda: self.measure(self.save, *file),
            "dd bs=1M file -> file": lambda: self.measure(self.dd, *file),
            "xensr save -> pipe": lambda: self.measure(self.save_pipe, *pipe),
            "dd bs=1M file -> pipe": lambda: self.measure(self.dd_pipe, *pipe),
            "C parent save -> file": lambda: self.measure_c(self.c_save, *file),
            "C parent save -> pipe": lambda: self.measure_c(self.c_save_pipe, *pipe),
        }

    @property
    def _file(self) -> Tuple[Callable[[], int], Callable[[int], int]]:
        """Set-up and finish of an output file."""
        return self.file_setup, self.file_finish

    @property
    def _pipe(self) -> Tuple[Callable[[], _Pipe], Callable[[_Pipe], int]]:
        """Set-up and finish of an output pipe drained by `wc -c`."""
        return self.pipe_setup, self.pipe_finish

    def measure(self, op: Callable[[Any], None], setup: Callable[[], Any],
                finish: Callable[[Any], int]) -> Dict[str, float]:
        """Time op() alone; setup() makes its fds, finish() checks and
        cleans up (unlinking a 1 GiB file costs CPU: not the save's)."""
        ctx = setup()
        try:
            c0, k0 = _cpu(), _children_cpu()
            t0 = time.perf_counter()
            op(ctx)
            wall = time.perf_counter() - t0
            cpu = _cpu() - c0
            kids = _children_cpu() - k0
        finally:
            written = finish(ctx)
        assert written == self.nbytes, (written, self.nbytes)
        return {"wall_ms": wall * 1e3, "mbps": self.nbytes / wall / 1e6,
                "parent_cpu_ms": cpu * 1e3, "children_cpu_ms": kids * 1e3,
                "parent_cpu_frac": cpu / wall}

    def measure_c(self, op: Callable[[Any], None], setup: Callable[[], Any],
                  finish: Callable[[Any], int]) -> Dict[str, float]:
        """As measure(), with the C parent's own figures (spawn to reap)."""
        ctx = setup()
        try:
            op(ctx)
        finally:
            written = finish(ctx)
        assert written == self.nbytes, (written, self.nbytes)
        wall, cpu = self.c_figures["wall"], self.c_figures["cpu"]
        return {"wall_ms": wall * 1e3, "mbps": self.nbytes / wall / 1e6,
                "parent_cpu_ms": cpu * 1e3, "children_cpu_ms": float("nan"),
                "parent_cpu_frac": cpu / wall}

    def file_setup(self) -> int:
        return os.open(self.out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                       0o600)

    def file_finish(self, fd: int) -> int:
        os.close(fd)
        size = os.path.getsize(self.out_path)
        os.unlink(self.out_path)
        return size

    def pipe_setup(self) -> _Pipe:
        r, w = os.pipe()
        drain = subprocess.Popen(["wc", "-c"], stdin=r, stdout=subprocess.PIPE)
        os.close(r)
        return w, drain

    def pipe_finish(self, ctx: _Pipe) -> int:
        w, drain = ctx
        os.close(w)
        out, _ = drain.communicate()
        return int(out.split()[0])

    def save(self, fd: int) -> None:
        xapi.save_blocking(fd, None, helper=None, env=self.env, domid=self.domid)

    def save_pipe(self, ctx: _Pipe) -> None:
        self.save(ctx[0])

    def dd(self, fd: int) -> None:
        subprocess.run(["dd", f"if={self.ref}", "bs=1M", "status=none"],
                       stdout=fd, check=True)

    def dd_pipe(self, ctx: _Pipe) -> None:
        self.dd(ctx[0])

    def c_save(self, fd: int) -> None:
        proc = subprocess.run(
            [self.cparent, "-p", "-f", str(fd), "-d", str(self.domid), self.helper, "-", "0"],
            env=self.env, pass_fds=(fd,), capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"C parent failed: {proc.stderr.strip()}")
        out = dict(item.split("=", 1) for item in proc.stdout.split())
        self.c_figures["wall"] = int(out["ns"]) / 1e9
        self.c_figures["cpu"] = int(out["cpu_ns"]) / 1e9

    def c_save_pipe(self, ctx: _Pipe) -> None:
        self.c_save(ctx[0])


def _add_figures(res: Result, raw: Dict[str, Dict[str, List[float]]]) -> None:
    """The groups and targets of the result, from the samples."""
    def series(name: str, key: str, unit: str, hib: bool = False) -> Series:
        return Series(name, unit, raw[name][key], higher_is_better=hib)

    files = Group("to a file: wall time",
                  [series("dd bs=1M file -> file", "wall_ms", "ms"),
                   series("xensr save -> file", "wall_ms", "ms"),
                   series("C parent save -> file", "wall_ms", "ms")],
                  baseline="dd bs=1M file -> file")
    pipes = Group("into a pipe drained by another process: wall time",
                  [series("dd bs=1M file -> pipe", "wall_ms", "ms"),
                   series("xensr save -> pipe", "wall_ms", "ms"),
                   series("C parent save -> pipe", "wall_ms", "ms")],
                  baseline="dd bs=1M file -> pipe")
    rate = Group("throughput", [series(n, "mbps", "MB/s", True) for n in raw])
    cpu = Group("parent CPU time during the operation (RUSAGE_SELF)",
                [series(n, "parent_cpu_ms", "ms") for n in raw]
                + [series("xensr save -> file", "children_cpu_ms", "ms"),
                   ])
    cpu.series[-1].variant = "helper CPU, save -> file (RUSAGE_CHILDREN)"
    frac = Group("parent CPU / wall time",
                 [series("xensr save -> file", "parent_cpu_frac", "fraction"),
                  series("xensr save -> pipe", "parent_cpu_frac", "fraction"),
                  series("C parent save -> file", "parent_cpu_frac", "fraction"),
                  series("C parent save -> pipe", "parent_cpu_frac", "fraction")])
    res.groups += [files, pipes, rate, cpu, frac]
    res.targets.append(Target("save -> file: parent CPU / wall",
                              frac.get("xensr save -> file").median, CPU_TARGET, "<="))
    res.targets.append(Target("save -> pipe: parent CPU / wall",
                              frac.get("xensr save -> pipe").median, CPU_TARGET, "<="))
