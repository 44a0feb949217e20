"""Each fuzz target runs a bounded number of executions from the seed
corpora and finds nothing (the CI share of fuzzing; long campaigns are
``python -m fuzz campaign``, see fuzz/README.md).

The seeds are generated once per session from real runs of the helpers
on the simulated host; the run is libFuzzer's own (a fixed ``-seed`` so
that a failure replays), and its output is read back: it must say it
loaded the seeds, gained coverage, and executed every run asked for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[2]

#: Executions per target: a few seconds each at the rates fuzz/README.md
#: records, under two minutes for all three on a loaded two-core machine.
RUNS = {"callout": 20000, "stream": 20000, "helper": 1000}
MAX_LEN = {"callout": 8192, "stream": 65536, "helper": 4096}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, simhost_libs) -> Path:
    from fuzz import seeds as seedgen

    out = tmp_path_factory.mktemp("seeds")
    sizes = seedgen.generate(out)
    assert all(n > 0 for n in sizes.values()), sizes
    return out


@pytest.mark.parametrize("target", sorted(RUNS))
def test_target_runs_clean_from_the_seeds(target, seeds, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XENSR_FUZZ_KNOWN", None)
    cmd = [sys.executable, "-m", f"fuzz.targets.{target}", f"-runs={RUNS[target]}",
           "-seed=1", f"-max_len={MAX_LEN[target]}", f"-artifact_prefix={tmp_path}/",
           "-print_final_stats=1", str(corpus), str(seeds / target)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       errors="replace", timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    n_seeds = len(os.listdir(seeds / target))
    assert re.search(rf"INFO:\s+{n_seeds} files found in {re.escape(str(seeds / target))}", out), out[-4000:]
    executed = re.search(r"^stat::number_of_executed_units: (\d+)", out, re.M)
    assert executed and int(executed.group(1)) >= RUNS[target], out[-4000:]
    assert f"Done {RUNS[target]} runs" in out, out[-4000:]
    cov = [int(c) for c in re.findall(r" cov: (\d+) ", out)]
    assert cov and max(cov) > 0, out[-4000:]
    assert not list(tmp_path.glob("crash-*")), out[-4000:]
