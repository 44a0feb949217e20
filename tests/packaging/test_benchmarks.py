"""The benchmark suite runs and reports every comparison it claims.

No timing is asserted: only that `python -m benchmarks --quick` completes,
that the table and the JSON name each variant with a median, a spread and
a ratio, and that each target is reported with its figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPECTED = {
    "roundtrip": {
        "C floor (blocking read)", "C floor (poll + read)", "xensr blocking",
        "xensr asyncio", "pure Python blocking", "pure Python asyncio add_reader",
    },
    "decode": {"C floor", "xensr blocking", "xensr asyncio", "pure Python blocking"},
    "spawn": {"xensr Callout (low level)", "xensr save_domain", "os.posix_spawn",
              "os.fork + os.execve", "subprocess.Popen"},
}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    proc = _run("--quick", "--reps", "1", "--only", "roundtrip,decode",
                "--only", "spawn", "--json", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(path) as f:
        return proc.stdout, json.load(f)


def test_json_has_every_comparison(quick) -> None:
    _, doc = quick
    assert doc["failed"] == {}
    assert doc["machine"]["nproc"] == os.cpu_count()
    assert "--quick" in doc["machine"]["command"]
    by_name = {r["name"]: r for r in doc["results"]}
    assert set(by_name) == set(EXPECTED)
    for name, variants in EXPECTED.items():
        res = by_name[name]
        seen = set()
        for group in res["groups"]:
            assert group["series"], group
            for s in group["series"]:
                seen.add(s["variant"])
                # one rep, so median, min and max are the one sample
                assert s["n"] == 1 and len(s["samples"]) == 1
                assert s["median"] == s["min"] == s["max"] == s["samples"][0]
                assert s["median"] > 0
                if group["baseline"]:
                    base = [x for x in group["series"] if x["variant"] == group["baseline"]]
                    assert len(base) == 1
                    assert s["ratio_to_baseline"] == pytest.approx(
                        s["median"] / base[0]["median"])
        assert variants <= seen, (name, seen)
        assert res["targets"], name
        for t in res["targets"]:
            assert t["op"] in ("<=", ">=")
            assert t["met"] == (t["value"] <= t["bound"] if t["op"] == "<="
                                else t["value"] >= t["bound"])


def test_spawn_sizes_grow(quick) -> None:
    _, doc = quick
    spawn = next(r for r in doc["results"] if r["name"] == "spawn")
    # one total-time group and one spawn-call group per size
    assert len(spawn["groups"]) == 2 * len(spawn["params"]["sizes_mib"])
    assert len(spawn["targets"]) == 2 * len(spawn["params"]["sizes_mib"])


def test_table_shows_variants_and_targets(quick) -> None:
    out, doc = quick
    assert out.startswith("machine: ")
    for name, variants in EXPECTED.items():
        assert f"== {name}: " in out
        for v in variants:
            assert v in out
    n_targets = sum(len(r["targets"]) for r in doc["results"])
    assert out.count("(target ") == n_targets
    assert "JSON: " in out


def test_unknown_benchmark_is_a_usage_error() -> None:
    proc = _run("--only", "nosuch", timeout=30)
    assert proc.returncode == 2
    assert "unknown benchmark 'nosuch'" in proc.stderr


def test_migration_rows(tmp_path) -> None:
    """migrate-throughput and migrate-many run and report their variants
    (the ssh ones, or why they were skipped) and targets."""
    path = tmp_path / "mig.json"
    proc = _run("--quick", "--reps", "1", "--only", "migrate-throughput,migrate-many",
                "--json", str(path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(path) as f:
        doc = json.load(f)
    assert doc["failed"] == {}
    by_name = {r["name"]: r for r in doc["results"]}
    thr = by_name["migrate-throughput"]
    seen = {s["variant"] for g in thr["groups"] for s in g["series"]}
    transports = ["tcp"]
    if not any(n.startswith("ssh variants skipped: ") for n in thr["notes"]):
        transports.append("ssh")
    for t in transports:
        assert {f"floor: dd -> {t} -> dd", f"xensr idle guest over {t}",
                f"xensr live guest over {t}"} <= seen, seen
        # the sender's data path is splice(2), not a copy through Python
        prof = thr["params"][f"{t}_profile"]
        assert prof["splice_calls"] > 0 and prof["read_calls"] < 10, prof
    assert len(thr["targets"]) == 4 * len(transports)
    many = by_name["migrate-many"]
    seen = {s["variant"] for g in many["groups"] for s in g["series"]}
    n = many["params"]["migrations"]
    assert {f"{n} at once", f"{n} one after the other"} <= seen
    assert [t["name"] for t in many["targets"]] == [
        f"{n} at once: time over one after the other",
        f"{n} at once: parent RSS per migration (KiB)", f"{n} at once: fds left after"]
    for res in (thr, many):
        for t in res["targets"]:
            assert t["met"] == (t["value"] <= t["bound"] if t["op"] == "<="
                                else t["value"] >= t["bound"])
