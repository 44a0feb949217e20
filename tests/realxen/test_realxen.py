"""Real Xen 4.17 and 4.20 in QEMU: xensr's helper and API against a real hypervisor.

One boot per release runs every scenario (tests/realxen/dom0/scenarios.py);
each test here runs once per release (the ``realxen`` fixture is
parametrised) and asserts one scenario's result marker and the facts it
reported.
"""

from __future__ import annotations

import json

import pytest

from . import images, runner

pytestmark = [pytest.mark.realxen, pytest.mark.timeout(1800)]


def assert_counter_carried_on(details: dict) -> None:
    counter = details["counter"]
    before_n = counter["before"][0]
    assert counter["after_first"][0] >= before_n - 2, counter
    assert counter["after_last"][0] >= before_n + 2, counter


def test_dom0_cpu_keeps_process_state(realxen):
    """The canary: the emulated machine keeps each process's CPU state across
    context switches (three processes forking and hashing on two vCPUs)."""
    realxen.result("dom0_cpu_sanity")


def test_xl_save_restore_with_debian_helper(realxen):
    """The baseline: stock xl with Debian's helper (proves the tier itself)."""
    d = realxen.result("xl_save_restore_debian").details
    assert "xensr" not in d["helper_save"]
    assert_counter_carried_on(d)


def test_xl_save_restore_with_xensr_helper(realxen):
    """xl save / xl restore with LIBXL_SAVE_HELPER pointing at xensr's helper."""
    d = realxen.result("xl_save_restore").details
    assert "starting save" in d["helper_save"] and "xensr" in d["helper_save"]
    assert "starting restore" in d["helper_restore"] and "xensr" in d["helper_restore"]
    assert d["file_bytes"] > 128 << 20  # the guest's 128 MiB went through
    assert_counter_carried_on(d)


def test_xl_save_restore_pvh_with_xensr_helper(realxen):
    """The same for a PVH guest (an HVM-type libxc stream)."""
    d = realxen.result("xl_save_restore_pvh").details
    assert "xensr" in d["helper_save"] and "xensr" in d["helper_restore"]
    assert_counter_carried_on(d)


@pytest.mark.parametrize("helper", ["xensr", "debian"])
@pytest.mark.parametrize("mode", ["nonlive", "live"])
def test_api_save_then_xl_restore(realxen, helper, mode):
    """The xensr API saves (suspend callback: XenHost.suspend) into an xl save file;
    stock xl restore brings the guest back and its counter carries on.
    Non-live saves use the PV guest, live ones the PVH guest (Debian's Xen
    has no shadow paging, which a PV guest's log-dirty mode needs)."""
    d = realxen.result(f"api_save_{helper}_{mode}").details
    assert d["file_bytes"] > 128 << 20
    assert d["callbacks"]["suspend"] == 1
    assert d["inspect"]["valid"] is True and d["inspect"]["ended"] == "END"
    assert d["helper"].endswith("xensr-save-helper" if helper == "xensr" else "libxl-save-helper")
    assert_counter_carried_on(d)


def test_api_live_save_of_pv_guest_reports_libxc_failure(realxen):
    """Without shadow paging libxc cannot live-save a PV guest: xensr raises
    SaveRestoreError with libxc's errno, and the guest goes on running."""
    d = realxen.result("api_save_pv_live_unsupported").details
    assert d["error"].startswith("SaveRestoreError")
    assert d["retval"] != 0 and d["errno"] > 0
    assert d["counter"]["after"][0] >= d["counter"]["before"][0] + 2


def test_api_live_save_cancelled_during_precopy(realxen):
    """Cancelling a live save mid-precopy stops the helper gracefully (SIGTERM,
    libxc unwinds) and the guest keeps running."""
    d = realxen.result("api_cancel_precopy").details
    assert d["raised"].startswith("Aborted")
    assert d["helper_returncode"] == 0  # completed after SIGTERM, not killed
    assert_cancelled_in_precopy(d)


def test_aio_live_save_cancelled_during_precopy(realxen):
    """The same through asyncio: cancelling the task raises CancelledError
    once the helper has unwound and exited."""
    d = realxen.result("api_cancel_precopy_aio").details
    assert d["raised"] == "CancelledError"
    assert_cancelled_in_precopy(d)


def assert_cancelled_in_precopy(d: dict) -> None:
    doing, done, total = d["aborted_at"]
    assert 0 < done < total, d["aborted_at"]  # in the middle of a round
    assert "suspend" not in d["callback_calls"]
    assert "complete r=-1" in d["helper_unwound"][0]
    assert d["counter"]["after"][0] >= d["counter"]["before"][0] + 2


def test_broken_helper_is_detected(realxen):
    """A helper that exits at once fails the xl scenario and the API clearly."""
    d = realxen.result("broken_helper_detected").details
    assert "xl save" in d["xl_save_restore"] and "exited with status" in d["xl_save_restore"]
    assert d["api"].startswith("HelperExitError"), d["api"]


@pytest.mark.parametrize("scenario,bindings", [
    ("xenhost_suspend_resume", "xen.lowlevel"),
    ("xenhost_suspend_resume_ctypes", "ctypes"),
])
def test_xenhost_suspends_and_resumes_the_guest(realxen, scenario, bindings):
    """XenHost.suspend (xenstore, then the hypervisor's shutdown reason)
    and XenHost.resume (suspend-cancel): the same domain runs on, through
    Debian's xen.lowlevel bindings by default and through ctypes."""
    d = realxen.result(scenario).details
    assert d["bindings"] == bindings
    assert (d["domain_type"], d["domain_name"]) == ("pv", "xensr-pv")
    assert d["after_suspend"] == "shutdown(suspend)" and d["after_resume"] == "running"
    assert d["same_domid"] is True
    assert d["counter"]["after"][0] >= d["counter"]["before"][0] + 2


def test_failed_save_after_suspend_is_resumed_by_xenhost(realxen):
    """A save cancelled after the suspend leaves the guest suspended;
    XenHost.resume brings it back and its counter advances."""
    d = realxen.result("api_save_failed_after_suspend_resumed").details
    assert d["raised"].startswith("Aborted"), d["raised"]
    assert d["callback_calls"] == ["suspend"]
    assert (d["after_failure"], d["after_resume"]) == ("shutdown(suspend)", "running")
    assert d["counter"]["after"][0] >= d["counter"]["before"][0] + 2


def test_figure_xl_save_against_xensr_api(realxen, capsys):
    """Wall time of `xl save` and of the xensr API saving the same guest."""
    d = realxen.result("figure").details
    assert len(d["xl_save_s"]) == len(d["api_save_s"]) == d["rounds"]
    figure = {
        "what": f"save of a running 128 MiB PV guest on Xen {realxen.release} in QEMU (TCG), "
                "same boot: `xl save` (Debian's helper) against xensr.save_domain_to_file "
                "(xensr's helper, Python suspend callback) into an xl save file",
        "xl_save_median_s": d["xl_save_median_s"],
        "xensr_api_median_s": d["api_save_median_s"],
        "ratio_xensr_over_xl": d["ratio_api_over_xl"],
        "xl_save_s": d["xl_save_s"],
        "xensr_api_s": d["api_save_s"],
        "versions": realxen.run.artifacts.versions,
    }
    out = images.release_cache(images.RELEASES[realxen.release]) / "figure.json"
    out.write_text(json.dumps(figure, indent=1, sort_keys=True) + "\n")
    with capsys.disabled():
        print(f"\nrealxen figure, Xen {realxen.release}: xl save {d['xl_save_median_s']:.2f} s, xensr API "
              f"{d['api_save_median_s']:.2f} s (median of {d['rounds']}), ratio "
              f"{d['ratio_api_over_xl']:.2f}; written to {out}")


def test_xl_save_file_crosses_to_the_next_release(realxen):
    """Old to new on real Xen: the 4.17 boot saves the running PV guest with
    stock `xl save` onto its export disk; the 4.20 boot restores that file
    with stock `xl restore` and the guest's counter carries on from where it
    was in the 4.17 boot."""
    names = runner.releases()
    i = names.index(realxen.release)
    if i + 1 < len(names):
        d = realxen.result("export_for_next_release").details
        assert d["release"] == realxen.release and d["bytes"] > 128 << 20
    if i > 0:
        d = realxen.result("import_from_older_release").details
        assert (d["saved_on"], d["restored_on"]) == (names[i - 1], realxen.release)
        assert_counter_carried_on(d)
    if len(names) == 1:
        pytest.skip(f"only Xen {realxen.release} boots in this run (XENSR_REALXEN_RELEASES)")
