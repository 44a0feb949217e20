"""python -m fuzz: seed corpora, single runs and long campaigns.

    python -m fuzz seeds [DIR]                 generate the seed corpora
    python -m fuzz run TARGET [--time S] [--runs N] [-- libFuzzer args]
    python -m fuzz campaign [--minutes M] [--share callout=45,stream=45,helper=10]

Everything goes under build/fuzz/: seeds/<target>, corpus/<target> (what
the fuzzer kept), findings/<target> (crashing inputs), campaign.json and
campaign.md (the campaign's table).  Each target runs as its own process,
one at a time, at nice 19.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "fuzz"
TARGETS = ("callout", "stream", "helper")
#: Largest input per target: a few frames / a slimmed stream / a command line.
MAX_LEN = {"callout": 8192, "stream": 65536, "helper": 4096}


@dataclass
class Stats:
    """What one or more libFuzzer runs of a target reported."""

    target: str
    runs: int = 0
    seconds: float = 0.0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    rounds: int = 0
    exit_codes: List[int] = field(default_factory=list)
    findings: Dict[str, str] = field(default_factory=dict)    # signature -> input file
    repeats: Dict[str, int] = field(default_factory=dict)     # signature -> times seen again

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


_STATUS = re.compile(r"^#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.M)
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def parse_output(text: str, stats: Stats) -> Optional[str]:
    """Add one run's output to ``stats``; returns the new finding's
    signature, if the run ended on one."""
    from fuzz.targets import KNOWN_PREFIX, SIGNATURE_PREFIX

    executed = _EXECUTED.findall(text)
    if executed:
        stats.runs += int(executed[-1])
    status = _STATUS.findall(text)
    if status:
        cov, ft, corp = map(int, status[-1])
        stats.cov, stats.ft = max(stats.cov, cov), max(stats.ft, ft)
        stats.corpus = corp
    seen: Dict[str, int] = {}      # the last (largest) count printed per signature
    for line in text.splitlines():
        if line.startswith(KNOWN_PREFIX):
            n, sig = line[len(KNOWN_PREFIX):].split(" ", 1)
            seen[sig] = max(seen.get(sig, 0), int(n))
    for sig, n in seen.items():
        stats.repeats[sig] = stats.repeats.get(sig, 0) + n
    sigs = [line[len(SIGNATURE_PREFIX):] for line in text.splitlines()
            if line.startswith(SIGNATURE_PREFIX)]
    if not sigs:
        return None
    artifact = _ARTIFACT.findall(text)
    stats.findings.setdefault(sigs[-1], artifact[-1] if artifact else "")
    return sigs[-1]


def ensure_seeds() -> Path:
    seeds = WORK / "seeds"
    if not all((seeds / t).is_dir() and any((seeds / t).iterdir()) for t in TARGETS):
        from fuzz import seeds as seedgen

        for name, n in seedgen.generate(seeds).items():
            print(f"fuzz: {n} {name} seeds in {seeds / name}", flush=True)
    return seeds


def run_target(target: str, libfuzzer_args: List[str], *, known: Optional[Path] = None,
               corpus: Optional[Path] = None, log: Optional[Path] = None) -> subprocess.CompletedProcess:
    """One libFuzzer run of ``target`` on its corpus and seeds, at nice 19."""
    seeds = ensure_seeds() / target
    corpus = corpus or WORK / "corpus" / target
    findings = WORK / "findings" / target
    corpus.mkdir(parents=True, exist_ok=True)
    findings.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", "19", sys.executable, "-m", f"fuzz.targets.{target}",
           f"-max_len={MAX_LEN[target]}", f"-artifact_prefix={findings}/",
           "-print_final_stats=1", *libfuzzer_args, str(corpus), str(seeds)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if known is not None:
        env["XENSR_FUZZ_KNOWN"] = str(known)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    return proc


def cmd_run(args: argparse.Namespace) -> int:
    extra = list(args.libfuzzer)
    if args.runs is not None:
        extra.append(f"-runs={args.runs}")
    if args.time is not None:
        extra.append(f"-max_total_time={args.time}")
    proc = run_target(args.target, extra)
    sys.stdout.write(proc.stdout)
    stats = Stats(args.target)
    sig = parse_output(proc.stdout, stats)
    print(f"fuzz: {args.target}: {stats.runs} runs, cov {stats.cov} ft {stats.ft}"
          + (f"; FINDING: {sig}" if sig else ""))
    return proc.returncode


def _campaign_target(target: str, seconds: float, round_seconds: int, log: Path) -> Stats:
    """Run ``target`` for ``seconds`` in rounds; after a finding, record it
    and go on with its signature known (counted, not stopping the run)."""
    stats = Stats(target)
    known = WORK / "findings" / f"{target}.known"
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text("")
    end = time.monotonic() + seconds
    while time.monotonic() < end - 5:
        left = int(min(round_seconds, end - time.monotonic()))
        t0 = time.monotonic()
        proc = run_target(target, [f"-max_total_time={left}"], known=known, log=log)
        stats.seconds += time.monotonic() - t0
        stats.rounds += 1
        stats.exit_codes.append(proc.returncode)
        sig = parse_output(proc.stdout, stats)
        if sig is None and proc.returncode != 0:
            stats.findings.setdefault(f"exit status {proc.returncode} without a signature", "")
            break
        if sig is not None:
            print(f"fuzz: {target}: finding {sig!r} ({stats.findings[sig]})", flush=True)
            with known.open("a") as f:
                f.write(sig + "\n")
        print(f"fuzz: {target}: {stats.runs} runs in {stats.seconds:.0f} s, "
              f"cov {stats.cov} ft {stats.ft}", flush=True)
    return stats


def markdown(results: List[Stats], started: str, command: str) -> str:
    lines = [f"Campaign of {started}, `{command}`:", "",
             "| target | executions | seconds | exec/s | cov | ft | corpus | findings |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for s in results:
        # Counts of repeats are lower bounds (printed at powers of two).
        found = "; ".join(f"{sig} (seen {1 + s.repeats.get(sig, 0)}+ times)"
                          for sig in s.findings) or "none"
        lines.append(f"| {s.target} | {s.runs:,} | {s.seconds:.0f} | {s.rate:,.0f} | {s.cov} "
                     f"| {s.ft} | {s.corpus} | {found} |")
    total = sum(s.runs for s in results)
    secs = sum(s.seconds for s in results)
    lines.append(f"| all | {total:,} | {secs:.0f} | {total / secs if secs else 0:,.0f} | | | | |")
    return "\n".join(lines) + "\n"


def cmd_campaign(args: argparse.Namespace) -> int:
    shares = dict(item.split("=") for item in args.share.split(","))
    total = sum(float(v) for v in shares.values())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ensure_seeds()
    log = WORK / "campaign.log"
    log.unlink(missing_ok=True)
    results = []
    for target in TARGETS:
        seconds = args.minutes * 60 * float(shares.get(target, 0)) / total
        if seconds >= 10:
            results.append(_campaign_target(target, seconds, args.round, log))
    command = "python -m fuzz campaign " + " ".join(sys.argv[2:])
    (WORK / "campaign.json").write_text(json.dumps(
        {"started": started, "command": command,
         "targets": [dict(asdict(s), rate=s.rate) for s in results]}, indent=2))
    table = markdown(results, started, command.strip())
    (WORK / "campaign.md").write_text(table)
    print(table)
    return 1 if any(s.findings for s in results) else 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from fuzz import seeds as seedgen

    out = Path(args.dir) if args.dir else WORK / "seeds"
    for name, n in seedgen.generate(out).items():
        print(f"{name}: {n} seeds in {out / name}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seeds", help="generate the seed corpora")
    s.add_argument("dir", nargs="?")
    s.set_defaults(fn=cmd_seeds)
    r = sub.add_parser("run", help="run one target once")
    r.add_argument("target", choices=TARGETS)
    r.add_argument("--time", type=int, help="seconds (libFuzzer -max_total_time)")
    r.add_argument("--runs", type=int, help="executions (libFuzzer -runs)")
    r.add_argument("libfuzzer", nargs="*", help="more libFuzzer arguments (after --)")
    r.set_defaults(fn=cmd_run)
    c = sub.add_parser("campaign", help="a long campaign, one target at a time")
    c.add_argument("--minutes", type=float, default=60.0, help="total time (default 60)")
    c.add_argument("--share", default="callout=45,stream=45,helper=10",
                   help="time share per target (default callout=45,stream=45,helper=10)")
    c.add_argument("--round", type=int, default=600,
                   help="seconds per libFuzzer run before a restart (default 600)")
    c.set_defaults(fn=cmd_campaign)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
