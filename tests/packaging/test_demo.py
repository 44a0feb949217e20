"""xensr demo: the main job on a simulated host, from the CLI."""

import json
import os

import pytest

from tests.support.fixtures import DEBIAN_BIN
from xensr import cli, demo
from xensr.testing import SimulatedHost

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN_HELPER = str(DEBIAN_BIN / "libxl-save-helper")   # of the Xen built for


def run_json(capsys, *argv):
    status = cli.main(["demo", "--json", "--no-progress", *argv])
    out = capsys.readouterr()
    return status, (json.loads(out.out) if out.out.strip() else None), out.err


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_live_demo_restores_identical_memory(capsys, kind):
    status, report, err = run_json(capsys, "--memory", "24", "--kind", kind,
                                   "--dirty-pages", "300")
    assert status == 0, err
    assert report["memory_identical"] is True
    assert report["memory_sha256"] == report["restored_memory_sha256"]
    assert report["precopy_rounds"] >= 2
    # A live save sends every page once, then the pages dirtied meanwhile.
    assert report["pages_sent"] > 24 * 256
    assert (report["store_gfn"], report["console_gfn"]) == (
        report["source_store_gfn"], report["source_console_gfn"])


def test_non_live_demo_sends_each_page_once(capsys):
    status, report, err = run_json(capsys, "--memory", "16", "--no-live")
    assert status == 0, err
    assert report["live"] is False
    assert report["pages_sent"] == 16 * 256
    assert report["memory_identical"]


@pytest.mark.skipif(not os.path.exists(DEBIAN_HELPER),
                    reason="Debian's xen-utils is not unpacked (run ./bootstrap deps)")
def test_demo_with_debians_helper(capsys):
    status, report, err = run_json(capsys, "--memory", "16", "--helper", DEBIAN_HELPER)
    assert status == 0, err
    assert report["helper"] == DEBIAN_HELPER and report["memory_identical"]


def test_demo_fails_when_memory_differs(capsys, monkeypatch):
    real = SimulatedHost.memory_digest
    calls = []

    def lying(self, domid):
        calls.append(domid)
        digest = real(self, domid)
        return digest if len(calls) == 1 else "0" * 64

    monkeypatch.setattr(SimulatedHost, "memory_digest", lying)
    status, report, _ = run_json(capsys, "--memory", "8", "--no-live")
    assert status == 1 and report["memory_identical"] is False


def test_demo_reports_a_helper_failure_in_one_line(capsys, tmp_path):
    status, report, err = run_json(capsys, "--memory", "8", "--helper", "/nonexistent/helper")
    assert status == 1 and report is None
    assert err.count("\n") == 1 and "demo:" in err and "/nonexistent/helper" in err


def test_demo_text_output_and_kept_file(capsys, tmp_path):
    keep = tmp_path / "kept.save"
    status = cli.main(["demo", "--memory", "8", "--keep", str(keep)])
    out = capsys.readouterr().out
    assert status == 0
    assert "memory: IDENTICAL" in out and "summary:" in out
    assert keep.stat().st_size > 8 << 20
    assert cli.main(["inspect", str(keep)]) == 0


def test_demo_rejects_bad_sizes():
    assert cli.main(["demo", "--memory", "0"]) == 2
    assert cli.main(["demo", "--dirty-pages", "-1"]) == 2


def assert_usage_error(capsys, argv, words):
    """Exit 2 before anything runs: argparse's usage, then one error line."""
    assert cli.main(["demo", "--no-progress", *argv]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "Traceback" not in out.err
    errors = [line for line in out.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("xensr demo: error:"), out.err
    for word in words:
        assert word in errors[0], out.err


@pytest.mark.parametrize("argv, words", [
    (["--vcpus", "1000"], ["--vcpus", "128", "1000"]),
    (["--memory", "99999999"], ["--memory", "99999999"]),
    (["--keep", "/nonexistent/dir/x"], ["--keep", "/nonexistent/dir"]),
])
def test_demo_values_the_simulated_host_refuses_are_usage_errors(capsys, argv, words):
    assert_usage_error(capsys, argv, words)


def test_demo_keep_naming_a_directory_is_a_usage_error(capsys, tmp_path):
    assert_usage_error(capsys, ["--keep", str(tmp_path)], ["--keep", "directory"])
    assert list(tmp_path.iterdir()) == []


def test_demo_dirty_pages_beyond_the_guest_is_refused(capsys):
    # 8 MiB is 2048 pages: dirtying more per round than the guest has is
    # refused before a host or a guest is made.
    assert_usage_error(capsys, ["--memory", "8", "--dirty-pages", "2049"],
                       ["--dirty-pages", "2049", "2048"])


def test_demo_that_cannot_create_its_file_fails_in_one_line(capsys):
    # The directory exists (no usage error) but no file can be made in it.
    status, report, err = run_json(capsys, "--memory", "8", "--keep", "/proc/xensr-demo")
    assert status == 1 and report is None
    assert err.count("\n") == 1 and err.startswith("xensr: demo: ") and "/proc/xensr-demo" in err


def test_demo_dirty_pages_equal_to_the_guest_is_accepted(capsys):
    status, report, err = run_json(capsys, "--memory", "8", "--dirty-pages", "2048", "--no-live")
    assert status == 0, err
    assert report["guest"]["dirty_pages_per_round"] == 2048


def test_progress_bar_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = demo.ProgressBar(out, True)
    for done in (0, 50, 100):
        bar("xc", "Frames iteration 0", done, 100)
    bar("xc", "Domain now suspended", 0, 0)
    text = out.getvalue()
    assert "\r  Frames iteration 0" in text and "100%" in text and " 50%" in text
    assert "Domain now suspended\n" in text


def test_debian_helper_is_the_one_of_the_release_built_for():
    """`--helper debian` names Debian's helper of the Xen xensr is built for
    (xen-utils-4.17 on Debian 12, xen-utils-4.20 on Debian 13)."""
    from xensr import XEN_VERSION

    assert demo.DEBIAN_HELPER == f"/usr/lib/xen-{XEN_VERSION}/bin/libxl-save-helper"
