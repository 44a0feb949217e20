"""The downtime benchmark runs and reports its comparison (no timing is
asserted: only that it completes and names every figure and goal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_downtime_benchmark_reports_every_rate(tmp_path):
    path = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--reps", "1",
                           "--only", "downtime", "--json", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(path.read_text())
    (res,) = doc["results"]
    labels = {g["label"] for g in res["groups"]}
    for rate in ("idle", "light", "busy", "heavy", "never"):
        for what in ("time suspended", "pages sent while suspended", "total time",
                     "bytes through the transport"):
            assert f"{rate}: {what}" in labels
    names = {t["name"] for t in res["targets"]}
    assert any(n.startswith("never: unreachable") for n in names)
    for t in res["targets"]:
        assert t["met"] == (t["value"] <= t["bound"] if t["op"] == "<="
                            else t["value"] >= t["bound"])
