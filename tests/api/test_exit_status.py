"""exit_error: how the helper's end becomes the operation's error (a pure function)."""

import errno
import signal

import pytest

from xensr import HelperExitError, SaveRestoreError
from xensr.api import HelperExit, exit_error


def ended(**kw):
    base = dict(what="domain 5 save helper [42]", pid=42, returncode=0, status_lost=False,
                core_dumped=False, completed=True, results_missing=False, retval=0,
                errnoval=0, failed_call="save of domain 5 failed: xc_domain_save")
    base.update(kw)
    return HelperExit(**base)


def test_a_completed_helper_that_exited_0_is_a_success():
    assert exit_error(ended()) is None


@pytest.mark.parametrize("kw,reason,text", [
    (dict(returncode=255), "status", "exited with error status 255"),
    (dict(returncode=-signal.SIGKILL), "signal", "died due to fatal signal SIGKILL"),
    (dict(returncode=-signal.SIGSEGV, core_dumped=True), "signal", "SIGSEGV (core dumped)"),
    (dict(returncode=-77), "signal", "fatal signal signal 77"),
    (dict(returncode=None, status_lost=True, completed=False), "lost", "exit status unknown"),
    (dict(results_missing=True), "no-results", "without providing results"),
    (dict(completed=False), "no-completion", "without signalling completion"),
    # The exit status comes first, as libxl checks it first.
    (dict(returncode=254, completed=False, results_missing=True), "status", "status 254"),
])
def test_helper_exit_errors_in_libxl_order(kw, reason, text):
    err = exit_error(ended(**kw))
    assert isinstance(err, HelperExitError)
    assert err.reason == reason and text in str(err) and err.pid == 42


def test_lost_status_after_complete_is_judged_by_libxc_result():
    assert exit_error(ended(returncode=None, status_lost=True)) is None
    err = exit_error(ended(returncode=None, status_lost=True, retval=-1, errnoval=errno.EIO))
    assert isinstance(err, SaveRestoreError)


def test_libxc_failure_is_a_save_restore_error():
    err = exit_error(ended(retval=-1, errnoval=errno.ENOMEM))
    assert isinstance(err, SaveRestoreError)
    assert err.retval == -1 and err.errno == errno.ENOMEM
    assert str(err).startswith("save of domain 5 failed: xc_domain_save returned -1 (errno")
    assert "no errno" in str(exit_error(ended(retval=-1, errnoval=0)))
