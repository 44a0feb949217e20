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
    # Every rate ends with its goals marked, whichever way it went (under
    # load even the busiest guest may converge, or a light one abort).
    for rate in ("idle", "light", "busy", "heavy", "never"):
        aborted = f"{rate}: unreachable, xensr aborts cleanly (aborted runs / runs)"
        converged = {f"{rate}: xensr suspended time (s) within the limit",
                     f"{rate}: xensr / default suspended time",
                     f"{rate}: xensr / default bytes"}
        assert (aborted in names) != (converged <= names), (rate, sorted(names))
    for t in res["targets"]:
        assert t["met"] == (t["value"] <= t["bound"] if t["op"] == "<="
                            else t["value"] >= t["bound"])
