"""Measurement plumbing shared by the benchmarks.

Every comparison runs its variants interleaved in one process run: each
repetition runs every variant once, in an order rotated from one repetition
to the next, so that a change in machine load touches all variants alike.
Figures are medians over the repetitions, with the spread (min..max) beside
them, and every target is a ratio of two medians from the same run.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(HERE, "csrc")

WARN = ["-Wall", "-Wextra", "-Werror"]


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, a helper that failed)."""


# ---------------------------------------------------------------- samples


@dataclass
class Series:
    """The samples of one variant, in one unit."""

    variant: str
    unit: str
    samples: List[float] = field(default_factory=list)
    # Lower is better for times; rates say so.
    higher_is_better: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def low(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def high(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def as_dict(self) -> Dict[str, Any]:
        return {
            "variant": self.variant,
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "n": len(self.samples),
            "samples": list(self.samples),
            "higher_is_better": self.higher_is_better,
            "note": self.note,
        }


@dataclass
class Target:
    """A target: ratio of two medians (or a plain figure) against a bound."""

    name: str
    value: float
    bound: float
    # "<=" : value must not exceed bound; ">=" : value must reach bound.
    op: str
    detail: str = ""

    @property
    def met(self) -> bool:
        if self.value != self.value:  # NaN: not measured
            return False
        return self.value <= self.bound if self.op == "<=" else self.value >= self.bound

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "bound": self.bound,
            "op": self.op,
            "met": self.met,
            "detail": self.detail,
        }


@dataclass
class Result:
    """What one benchmark produced."""

    name: str
    title: str
    params: Dict[str, Any] = field(default_factory=dict)
    groups: List["Group"] = field(default_factory=list)
    targets: List[Target] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "params": self.params,
            "groups": [g.as_dict() for g in self.groups],
            "targets": [t.as_dict() for t in self.targets],
            "notes": list(self.notes),
        }


@dataclass
class Group:
    """Variants measured together (interleaved), compared to a baseline."""

    label: str
    series: List[Series]
    baseline: Optional[str] = None

    def get(self, variant: str) -> Series:
        for s in self.series:
            if s.variant == variant:
                return s
        raise KeyError(variant)

    def ratio(self, variant: str, baseline: Optional[str] = None) -> float:
        """variant's median over the baseline's (time: >1 is slower)."""
        base = self.get(baseline or self.baseline or self.series[0].variant)
        value = self.get(variant)
        if not base.median:
            return float("nan")
        return value.median / base.median

    def as_dict(self) -> Dict[str, Any]:
        return {
            "label": self.label,
            "baseline": self.baseline,
            "series": [
                dict(s.as_dict(), ratio_to_baseline=self._ratio_or_none(s))
                for s in self.series
            ],
        }

    def _ratio_or_none(self, s: Series) -> Optional[float]:
        if not self.baseline:
            return None
        r = self.ratio(s.variant)
        return None if r != r else r


def interleave(
    variants: Dict[str, Callable[[], Dict[str, float]]],
    reps: int,
    warmup: int = 1,
) -> Dict[str, Dict[str, List[float]]]:
    """Run every variant `reps` times, interleaved with a rotating order.

    Each callable returns a dict of named figures for one run (for example
    {"us_per_rt": 4.1}).  Returns {variant: {figure: [samples]}}.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: Dict[str, Dict[str, List[float]]] = {n: {} for n in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            figures = variants[name]()
            for key, value in figures.items():
                out[name].setdefault(key, []).append(value)
    return out


# --------------------------------------------------------------- C builds


def pkg_config(*args: str) -> List[str]:
    try:
        out = subprocess.run(
            ["pkg-config", *args], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(
            f"pkg-config {' '.join(args)} failed ({exc}); "
            "on Debian 12: apt-get install pkg-config libxen-dev"
        ) from exc
    return shlex.split(out)


class CBuild:
    """C programs of the benchmarks, compiled into a private directory."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="xensr-bench-")
        self._built: Dict[str, str] = {}

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "CBuild":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _compile(self, name: str, sources: Sequence[str], flags: Sequence[str]) -> str:
        if name in self._built:
            return self._built[name]
        out = os.path.join(self.dir, name)
        cc = shlex.split(os.environ.get("CC", "cc"))
        cmd = [*cc, "-std=gnu11", "-O2", *WARN, "-D_GNU_SOURCE", *flags,
               *sources, "-o", out]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise BenchError(
                f"building {name} failed:\n{' '.join(cmd)}\n{proc.stderr}"
            )
        self._built[name] = out
        return out

    def bench_helper(self) -> str:
        """The scripted stand-in helper (csrc/bench_helper.c)."""
        version = _xensr_version()
        return self._compile(
            "xensr-bench-helper",
            [os.path.join(CSRC, "bench_helper.c"),
             os.path.join(ROOT, "helper_c", "xensr_msgs.c")],
            [f"-I{os.path.join(ROOT, 'helper_c')}",
             *pkg_config("--cflags", "xencontrol", "xenguest"),
             f'-DXENSR_VERSION="{version}"'],
        )

    def cparent(self) -> str:
        """The C floor: parent side of the protocol (csrc/cparent.c)."""
        return self._compile("xensr-bench-cparent",
                             [os.path.join(CSRC, "cparent.c")], [])

    def vg_pidfd(self) -> str:
        """The pidfd stand-ins preloaded under valgrind (csrc/vg_pidfd.c)."""
        return self._compile("vg_pidfd.so", [os.path.join(CSRC, "vg_pidfd.c")],
                             ["-shared", "-fPIC"])


def _xensr_version() -> str:
    try:
        import xensr

        return str(xensr.__version__)
    except Exception:  # pragma: no cover - the package is in the tree
        return "unknown"


def sources_digest() -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(CSRC)):
        with open(os.path.join(CSRC, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


# ------------------------------------------------------------- the machine


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "nproc": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return info


def cpu_seconds() -> float:
    """This process's user + system CPU time, all threads."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


# ------------------------------------------------------------------ output


def fmt(value: float, unit: str = "") -> str:
    if value != value:
        return "n/a"
    a = abs(value)
    if a >= 1000:
        s = f"{value:,.0f}"
    elif a >= 100:
        s = f"{value:.0f}"
    elif a >= 10:
        s = f"{value:.1f}"
    elif a >= 1:
        s = f"{value:.2f}"
    else:
        s = f"{value:.3g}"
    return s


def render(results: Sequence[Result], info: Dict[str, Any]) -> str:
    lines: List[str] = []
    cpu = info.get("cpu", "?")
    lines.append(
        f"machine: {cpu}, {info.get('nproc')} CPUs, {info.get('mem_gib', '?')} GiB, "
        f"Linux {info.get('kernel')}, Python {info.get('python')}"
    )
    if "command" in info:
        lines.append(f"command: {info['command']}")
    for res in results:
        lines.append("")
        lines.append(f"== {res.name}: {res.title}")
        if res.params:
            lines.append(
                "   " + ", ".join(f"{k}={v}" for k, v in res.params.items())
            )
        for group in res.groups:
            lines.extend(_render_group(group))
        if res.targets:
            lines.append("   targets:")
            for t in res.targets:
                mark = "met   " if t.met else "MISSED"
                lines.append(
                    f"     [{mark}] {t.name}: {fmt(t.value)} (target {t.op} {fmt(t.bound)})"
                    + (f"  {t.detail}" if t.detail else "")
                )
        for note in res.notes:
            lines.append(f"   note: {note}")
    return "\n".join(lines)


def _render_group(group: Group) -> List[str]:
    out = [f"  -- {group.label}"]
    wv = max(len(s.variant) for s in group.series)
    wv = max(wv, len("variant"))
    header = (f"     {'variant':<{wv}}  {'median':>10}  {'min':>10}  {'max':>10}"
              f"  {'unit':<10} {'ratio':>7}  n")
    out.append(header)
    for s in group.series:
        ratio = ""
        if group.baseline:
            r = group.ratio(s.variant)
            ratio = "base" if s.variant == group.baseline else f"{fmt(r)}x"
        out.append(
            f"     {s.variant:<{wv}}  {fmt(s.median):>10}  {fmt(s.low):>10}"
            f"  {fmt(s.high):>10}  {s.unit:<10} {ratio:>7}  {len(s.samples)}"
            + (f"  ({s.note})" if s.note else "")
        )
    return out
