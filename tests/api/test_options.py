"""The keyword options: one typed declaration, checked at run time and by mypy."""

import asyncio
import os
import shutil
import subprocess
import sys

import pytest

import xensr
from xensr import aio, api

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("call", [
    lambda: xensr.save_domain(1, 0, lve=True),
    lambda: xensr.save_domain(1, 0, log_tail=5),         # an Operation option only
    lambda: xensr.restore_domain(1, 0, store_evtchn=1, console_evtchn=2, store_domidd=0),
    lambda: xensr.SaveOperation(1, 0, timout=3),
    lambda: xensr.RestoreOperation(1, 0, store_evtchn=1, console_evtchn=2, recv_fd=3),
    lambda: asyncio.run(aio.save_domain(1, 0, kill_grce=1.0)),
    lambda: asyncio.run(aio.restore_domain(1, 0, store_evtchn=1, console_evtchn=2, live=True)),
    lambda: xensr.save_domain_to_file(1, "/nonexistent/x", liv=True),
    lambda: xensr.restore_domain_from_file(1, "/nonexistent/x", store_evtchn=1,
                                           console_evtchn=2, send_back=3),
])
def test_unknown_keywords_are_refused_before_anything_runs(call):
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        call()


def test_defaults_come_from_one_place():
    op = xensr.SaveOperation(1, 0)
    assert (op.live, op.debug, op.stream_type, op.back_fd, op.timeout, op.idle_timeout,
            op.kill_grace) == (False, False, xensr.XC_STREAM_PLAIN, -1, None, None,
                               api.DEFAULT_KILL_GRACE)
    op.close()
    op = xensr.RestoreOperation(1, 0, store_evtchn=4, console_evtchn=5, console_domid=7,
                                log_tail=3, kill_grace=0.5)
    assert (op.store_domid, op.console_domid, op.kill_grace) == (0, 7, 0.5)
    op.close()
    # Every option has a default, and each options class is documented.
    for kind in (api.SaveOperationOptions, api.RestoreOperationOptions):
        assert set(kind.__optional_keys__) <= set(api._DEFAULTS)
        assert kind.__doc__


SNIPPET = '''\
import asyncio
import xensr
from xensr import aio
from xensr.xlfile import restore_domain_from_file, save_domain_to_file

xensr.save_domain(1, 0, live=True, kill_grace=2.0)
xensr.save_domain(1, 0, lve=True)
xensr.restore_domain(1, 0, store_evtchn=1, console_evtchn=2, store_domidd=0)
xensr.SaveOperation(1, 0, timout=3.0)
xensr.RestoreOperation(1, 0, store_evtchn=1, console_evtchn=2, log_tial=3)
asyncio.run(aio.save_domain(1, 0, kill_grce=1.0))
asyncio.run(aio.restore_domain(1, 0, store_evtchn=1, console_evtchn=2, liv=True))
save_domain_to_file(1, "f", helpr="x")
restore_domain_from_file(1, "f", store_evtchn=1, console_evtchn=2, send_back=3)
save_domain_to_file(1, "f", live=True, timeout=5.0)
restore_domain_from_file(1, "f", store_evtchn=1, console_evtchn=2, store_domid=0)
xensr.save_domain(1, 0, live="yes")
'''


@pytest.mark.skipif(shutil.which("mypy") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "mypy")), reason="mypy is not installed")
def test_mypy_catches_a_misspelled_keyword_everywhere(tmp_path):
    src = tmp_path / "snippet.py"
    src.write_text(SNIPPET)
    env = dict(os.environ, MYPYPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), "--follow-imports=silent", str(src)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(str(src))]
    flagged = {int(ln.split(":")[1]) for ln in lines if "error" in ln}
    # Lines 7 to 14 misspell a keyword, 17 gives one the wrong type; 6, 15
    # and 16 are correct.
    assert flagged == set(range(7, 15)) | {17}, r.stdout + r.stderr
    assert all("Unexpected keyword argument" in ln for ln in lines
               if int(ln.split(":")[1]) in range(7, 15) and "error" in ln), r.stdout
