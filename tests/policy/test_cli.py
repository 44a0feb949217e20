"""The precopy policy from the command line (xensr demo's live save)."""

from __future__ import annotations

import json

from xensr import cli


def test_demo_with_a_downtime_limit(capsys):
    status = cli.main(["demo", "--json", "--no-progress", "--memory", "16",
                       "--dirty-pages", "100", "--downtime-limit", "10000"])
    out = capsys.readouterr().out
    assert status == 0, out
    report = json.loads(out)
    assert report["memory_identical"] is True
    # all, ~100, ~100 (no longer shrinking: stop), the final round
    assert report["precopy_rounds"] == 4
    assert report["pages_after_suspend"] > 0 and report["suspended_seconds"] >= 0


def test_demo_abort_when_it_cannot_converge(capsys):
    status = cli.main(["demo", "--no-progress", "--memory", "16", "--dirty-pages", "2000",
                       "--downtime-limit", "0.001", "--max-rounds", "2",
                       "--on-no-convergence", "abort"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Operation canceled" in err or "ECANCELED" in err, err


def test_bad_option_is_a_usage_error(capsys):
    assert cli.main(["demo", "--downtime-limit", "-5"]) == cli.EXIT_USAGE
    assert "--downtime-limit: must be a positive number" in capsys.readouterr().err
