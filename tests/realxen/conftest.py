"""The session fixture of the real-Xen tier: build once, boot once, all scenarios.

The tier is skipped (with the reason, shown by ``-ra``) only when QEMU cannot
run on this machine.  A failed build or boot fails every scenario test with
the reason and the console lines that matter.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import pytest

from . import images, qemu, runner


@dataclasses.dataclass
class Tier:
    run: Optional[runner.Run] = None
    error: Optional[str] = None

    def result(self, name: str) -> qemu.Result:
        """The named scenario's result; fails the test unless it passed."""
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)
        assert self.run is not None
        res = self.run.outcome.results.get(name)
        if res is None:
            pytest.fail(f"scenario {name} reported no result (the machine ended with "
                        f"{self.run.outcome.end!r}); console: {self.run.outcome.console}\n"
                        + "\n".join(self.scenario_lines(name)), pytrace=False)
        if not res.passed:
            lines = self.scenario_lines(name)
            canary = self.run.outcome.results.get("dom0_cpu_sanity")
            hint = ("\n(dom0_cpu_sanity failed too: the emulated CPU loses state across "
                    "context switches, so this failure may be the machine's, not xensr's)"
                    if canary is not None and not canary.passed and name != canary.name
                    else "")
            pytest.fail(f"scenario {name} {res.status}: {res.details.get('error', res.details)}"
                        + hint
                        + (f"\n{res.details['traceback']}" if "traceback" in res.details else "")
                        + "\nconsole lines of the scenario:\n"
                        + "\n".join("  | " + ln for ln in lines[-40:])
                        + f"\nfull console log: {self.run.outcome.console}", pytrace=False)
        return res

    def scenario_lines(self, name: str) -> List[str]:
        """Console lines from the scenario's BEGIN marker to its RESULT."""
        assert self.run is not None
        try:
            text = self.run.outcome.console.read_text(errors="replace")
        except OSError:
            return []
        lines = text.replace("\r\n", "\n").replace("\r", "\n").splitlines()
        out: List[str] = []
        inside = False
        for ln in lines:
            if f"XENSR-BEGIN {name}" in ln:
                inside = True
            if f"XENSR-RESULT {name} " in ln:
                break  # its text is already in the failure message
            if inside:
                out.append(ln)
        return out


@pytest.fixture(scope="session")
def realxen() -> Tier:
    try:
        qemu.preflight()
    except qemu.QemuUnavailable as exc:
        pytest.skip(f"real-Xen tier: QEMU cannot run here: {exc}")
    try:
        return Tier(run=runner.run())
    except qemu.QemuUnavailable as exc:
        pytest.skip(f"real-Xen tier: QEMU cannot run here: {exc}")
    except images.BuildError as exc:
        return Tier(error=f"real-Xen tier: building the images failed: {exc}")
    except qemu.BootError as exc:
        return Tier(error=f"real-Xen tier: the machine failed: {exc}")
