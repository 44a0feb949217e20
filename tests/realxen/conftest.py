"""The session fixture of the real-Xen tier: per Xen release, build once,
boot once, all scenarios.

``realxen`` is parametrised by release (4.17, then 4.20; see
``runner.releases``), so each test runs against each release's boot.  A
release is skipped (with the reason, shown by ``-ra``) only when QEMU cannot
run on this machine or the machine has no Debian of that release to build
it from.  A failed build or boot fails every scenario test of that release
with the reason and the console lines that matter.  The 4.20 boot is given
the 4.17 boot's export disk (an xl save file made on 4.17).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import pytest

from . import images, qemu, runner


@dataclasses.dataclass
class Tier:
    release: str
    run: Optional[runner.Run] = None
    error: Optional[str] = None
    skipped: Optional[str] = None

    def result(self, name: str) -> qemu.Result:
        """The named scenario's result; fails the test unless it passed."""
        if self.skipped is not None:
            pytest.skip(self.skipped)
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)
        assert self.run is not None
        res = self.run.outcome.results.get(name)
        if res is None:
            pytest.fail(f"scenario {name} reported no result (the machine ended with "
                        f"{self.run.outcome.end!r}); console: {self.run.outcome.console}\n"
                        + "\n".join(self.scenario_lines(name)), pytrace=False)
        if res.status == "SKIP":
            pytest.skip(f"Xen {self.release}: scenario {name}: {res.details.get('reason')}")
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


TIERS: Dict[str, Tier] = {}


def tier(release: str) -> Tier:
    """The release's run, made on first use; a release's boot is given the
    export disk of the boot of the release before it, made first if needed."""
    if release in TIERS:
        return TIERS[release]
    names = runner.releases()
    imported = None
    if release in names and names.index(release) > 0:
        prev = tier(names[names.index(release) - 1])
        if prev.run is not None:
            imported = prev.run.export
    t = Tier(release)
    try:
        qemu.preflight()
        last = not names or release == names[-1]
        t.run = runner.run(release, export=not last, imported=imported)
    except qemu.QemuUnavailable as exc:
        t.skipped = f"real-Xen tier: QEMU cannot run here: {exc}"
    except images.Unavailable as exc:
        t.skipped = f"real-Xen tier, Xen {release}: {exc}"
    except images.BuildError as exc:
        t.error = f"real-Xen tier, Xen {release}: building the images failed: {exc}"
    except qemu.BootError as exc:
        t.error = f"real-Xen tier, Xen {release}: the machine failed: {exc}"
    TIERS[release] = t
    return t


def pytest_generate_tests(metafunc):
    if "realxen" in metafunc.fixturenames:
        metafunc.parametrize("realxen", runner.releases(), indirect=True, scope="session")


@pytest.fixture(scope="session")
def realxen(request) -> Tier:
    t = tier(request.param)
    if t.skipped is not None:
        pytest.skip(t.skipped)
    return t
