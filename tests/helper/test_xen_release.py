"""A helper built for one Xen release on a host with another: refused
before it is spawned, with both releases named (the dynamic loader alone
would stop it with exit 127 and "cannot open shared object file")."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import xensr
from xensr import _xenlibs
from tests.simhost.cbuild import build_for_release
from tests.support import fakehelper as fh
from tests.support.fixtures import ROOT, XEN_RELEASE

OTHER = "4.20" if XEN_RELEASE != "4.20" else "4.19"


@pytest.fixture(scope="module")
def other_build(tmp_path_factory):
    """xensr's helper built against another release's libraries (the
    simulated host's, built for that release), and their directory."""
    return build_for_release(tmp_path_factory.mktemp("other"), OTHER)


@pytest.fixture
def built_for_other(monkeypatch, other_build):
    """xensr as if built for OTHER, with other_build's helper as its own."""
    helper, _ = other_build
    monkeypatch.setattr(_xenlibs, "XEN_VERSION", OTHER)
    monkeypatch.setattr(_xenlibs, "HELPER_XEN_LIBRARIES",
                        (f"libxenctrl.so.{OTHER}", f"libxenguest.so.{OTHER}"))
    monkeypatch.setattr(_xenlibs, "_own_helper", lambda: str(helper))
    return other_build


def save(host, domid, out: Path, helper: Path, env):
    with open(out, "wb") as f:
        return xensr.save_domain(domid, f, xensr.Callbacks(suspend=lambda: True),
                                 helper=helper, env=env, timeout=60)


def test_mismatch_is_refused_naming_both_releases(built_for_other, simulated_host, tmp_path):
    helper, _ = built_for_other
    host = simulated_host
    domid = host.create_domain(1)
    kids = fh.children()
    with pytest.raises(xensr.HelperStartError) as info:
        save(host, domid, tmp_path / "s", helper, host.env)
    err = info.value
    assert err.errno == errno.ELIBACC and err.filename == str(helper)
    assert (f"xensr's helper was built for Xen {OTHER} and needs libxenctrl.so.{OTHER}, "
            f"libxenguest.so.{OTHER}, but this host has Xen {XEN_RELEASE}") in str(err)
    assert fh.children() == kids          # nothing was spawned
    assert host.domain_state(domid)["state"] == "running"


def test_without_the_check_the_loader_stops_it(built_for_other, simulated_host, tmp_path,
                                               monkeypatch):
    """What the check spares the caller: the helper dies in the loader."""
    helper, _ = built_for_other
    monkeypatch.setattr(_xenlibs, "HELPER_XEN_LIBRARIES", ())
    host = simulated_host
    domid = host.create_domain(1)
    with pytest.raises(xensr.HelperExitError) as info:
        save(host, domid, tmp_path / "s", helper, host.env)
    assert info.value.status == 127


def test_helper_runs_where_its_release_is(built_for_other, simulated_host, tmp_path):
    """With OTHER's (simulated) libraries on the library path the check
    passes, and the helper saves and restores through them."""
    helper, libdir = built_for_other
    host = simulated_host
    env = dict(host.env, LD_LIBRARY_PATH=f"{libdir}:{host.env['LD_LIBRARY_PATH']}")
    domid = host.create_domain(1, kind="pv")
    res = save(host, domid, tmp_path / "s", helper, env)
    assert res.returncode == 0 and res.retval == 0
    target = host.create_empty_domain()
    with open(tmp_path / "s", "rb") as f:
        xensr.restore_domain(target, f, store_evtchn=1, console_evtchn=2, helper=helper,
                             env=env, timeout=60)
    assert host.memory_digest(target) == host.memory_digest(domid)


def test_other_helpers_are_not_checked(built_for_other, simulated_host, tmp_path, monkeypatch):
    """Only xensr's own helper is known to xensr; any other runs as given."""
    helper, _ = built_for_other
    monkeypatch.setattr(_xenlibs, "_own_helper", lambda: str(ROOT / "no-such-helper"))
    host = simulated_host
    with pytest.raises(xensr.HelperExitError):
        save(host, host.create_domain(1), tmp_path / "s", helper, host.env)


def test_no_xen_libraries_at_all(monkeypatch, tmp_path):
    """On a host without Xen the message says so."""
    monkeypatch.setattr(_xenlibs, "HELPER_XEN_LIBRARIES", ("libxenctrl.so.4.99",))
    monkeypatch.setattr(_xenlibs, "_SYSTEM_DIRS", (str(tmp_path),))
    monkeypatch.setattr(_xenlibs, "_search_dirs", lambda env: [str(tmp_path)])
    with pytest.raises(xensr.HelperStartError, match="this host has no Xen libraries"):
        _xenlibs.check_helper_libraries(_xenlibs._own_helper(), [],
                                        cache=str(tmp_path / "no-cache"))


def test_own_helper_passes_here(simulated_host):
    """The helper built in this tree finds its libraries on this host."""
    _xenlibs.check_helper_libraries(_xenlibs._own_helper(), None)
    env = [f"{k}={v}".encode() for k, v in simulated_host.env.items()]
    _xenlibs.check_helper_libraries(_xenlibs._own_helper(), env)
