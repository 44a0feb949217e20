"""xensr.realhost.XenHost without Xen: the xl commands it runs, how it reads
their output and maps their failures, and the suspend/resume protocol
against fake bindings (the real ones are proven in tests/realxen)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tests.support.fixtures import DEBIAN_ROOT, XEN_RELEASE
from xensr import DomainNotFound, SuspendTimeout, ToolstackError
from xensr.realhost import (SHUTDOWN_SUSPEND, CtypesBindings, DomainInfo, LowLevelBindings,
                            XenHost, hypervisor_release, parse_list_long)

# What `xl list -l 5` prints (libxl's JSON, shortened to the parts read).
LIST_LONG = json.dumps([{
    "domid": 5,
    "config": {
        "c_info": {"type": "pvh", "name": "web", "uuid": "6f1f4b1c-0000-4000-8000-000000000001"},
        "b_info": {"max_vcpus": 1, "max_memkb": 131072, "target_memkb": 131072,
                   "type.pvh": {}},
        "on_crash": "preserve",
    },
}], indent=4) + "\n"


class FakeXl:
    """Answers xl commands from a table; records every argv."""

    def __init__(self, answers: Dict[Tuple[str, ...], Tuple[int, str, str]]):
        self.answers = answers
        self.calls: List[List[str]] = []

    def __call__(self, argv, timeout):
        self.calls.append(list(argv))
        key = tuple(argv[1:])
        if key not in self.answers:
            return subprocess.CompletedProcess(argv, 1, "", f"unexpected {key}")
        rc, out, err = self.answers[key]
        if rc == -1:
            raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(argv, rc, out, err)


class FakeGuest:
    """Bindings with one guest behind them: it acknowledges a suspend
    request after ``ack_after`` polls of the node, then shuts down for
    ``reason`` after ``down_after`` more polls of its state (None: never)."""

    name = "fake"

    def __init__(self, domid=5, ack_after: Optional[int] = 2, down_after: Optional[int] = 3,
                 reason=SHUTDOWN_SUSPEND, vanish=False):
        self.domid = domid
        self.ack_after, self.down_after, self.reason, self.vanish = (
            ack_after, down_after, reason, vanish)
        self.store: Dict[str, bytes] = {}
        self.shutdown: Optional[int] = None
        self.gone = False
        self.acked = False
        self.log: List[str] = []
        self.resume_error: Optional[Exception] = None

    def _tick(self) -> None:
        node = f"/local/domain/{self.domid}/control/shutdown"
        if self.store.get(node) == b"suspend" and self.ack_after is not None:
            self.ack_after -= 1
            if self.ack_after < 0:
                self.store[node] = b""
                self.acked = True
        if self.acked and self.down_after is not None and self.shutdown is None:
            self.down_after -= 1
            if self.down_after < 0:
                self.acked = False
                if self.vanish:
                    self.gone = True
                else:
                    self.shutdown = self.reason

    def info(self, domid):
        self._tick()
        if domid != self.domid or self.gone:
            return None
        return DomainInfo(domid, False, self.shutdown is not None, self.shutdown or 0, False)

    def resume(self, domid, fast):
        self.log.append(f"resume {domid} fast={fast}")
        if self.resume_error is not None:
            raise self.resume_error
        self.shutdown = None

    def xs_read(self, path):
        return self.store.get(path)

    def xs_write(self, path, value):
        self.log.append(f"write {path}={value!r}")
        self.store[path] = value

    def close(self):
        self.log.append("close")


def host(bindings=None, **answers) -> Tuple[XenHost, FakeXl]:
    xl = FakeXl(answers.pop("table", {}))
    return XenHost(xl="/usr/lib/xen-4.20/bin/xl", bindings=bindings, release="4.20", run=xl,
                   poll_interval=0.0001), xl


# ----- xl


def test_xl_commands_for_each_operation():
    ok = (0, "", "")
    h, xl = host(table={("rename", "5", "web--migratedaway"): ok, ("destroy", "5"): ok,
                        ("pause", "5"): ok, ("unpause", "5"): ok,
                        ("domid", "web"): (0, "5\n", ""), ("domname", "5"): (0, "web\n", ""),
                        ("list", "-l", "5"): (0, LIST_LONG, "")})
    h.rename(5, "web--migratedaway")
    h.destroy(5)
    h.pause(5)
    h.unpause(5)
    assert h.lookup("web") == 5
    assert h.domain_name(5) == "web"
    assert h.domain_type(5) == "pvh"
    assert [c[1:] for c in xl.calls] == [
        ["rename", "5", "web--migratedaway"], ["destroy", "5"], ["pause", "5"],
        ["unpause", "5"], ["domid", "web"], ["domname", "5"], ["list", "-l", "5"]]
    assert all(c[0] == "/usr/lib/xen-4.20/bin/xl" for c in xl.calls)


def test_domain_config_is_the_config_object_of_xl_list_long():
    h, _ = host(table={("list", "-l", "5"): (0, LIST_LONG, "")})
    config = h.domain_config(5)
    assert b"\0" not in config
    assert json.loads(config) == json.loads(LIST_LONG)[0]["config"]
    assert config.decode("utf-8").startswith("{\n    \"c_info\"")


@pytest.mark.parametrize("argv,call", [
    (("domid", "nosuch"), lambda h: h.lookup("nosuch")),
    (("domname", "9"), lambda h: h.domain_name(9)),
    (("destroy", "9"), lambda h: h.destroy(9)),
    (("list", "-l", "9"), lambda h: h.domain_config(9)),
])
def test_a_missing_domain_is_domain_not_found(argv, call):
    said = {"domid": "Can't get domid of domain name 'nosuch', maybe this domain does "
                     "not exist.\n"}.get(argv[0], "9 is an invalid domain identifier (rc=-6)\n")
    h, _ = host(table={argv: (1, "", said)})
    with pytest.raises(DomainNotFound) as e:
        call(h)
    assert said.strip() in str(e.value) and "exited with status 1" in str(e.value)


def test_xl_failures_are_toolstack_errors_with_the_domain():
    h, _ = host(table={("rename", "5", "x"): (3, "", "libxl: error: some failure\n"),
                       ("pause", "5"): (-1, "", "")})
    with pytest.raises(ToolstackError) as e:
        h.rename(5, "x")
    assert not isinstance(e.value, DomainNotFound)
    assert e.value.domid == 5 and "some failure" in str(e.value)
    with pytest.raises(ToolstackError, match="did not end within"):
        h.pause(5)
    missing = XenHost(xl="/nonexistent/xl", bindings=FakeGuest(), release="4.20")
    with pytest.raises(ToolstackError, match="not found"):
        missing.destroy(5)


@pytest.mark.parametrize("text,error", [
    ("not json", "not JSON"),
    ('{"a": 1}', "no configuration of domain 5"),
    ('[{"domid": 6, "config": {}}]', "no configuration of domain 5"),
    ('"x"', "not a list"),
])
def test_list_long_output_that_is_not_a_config(text, error):
    with pytest.raises(ToolstackError, match=error):
        parse_list_long(text, 5)


def test_domain_type_must_be_pv_pvh_or_hvm():
    bad = json.dumps([{"domid": 5, "config": {"c_info": {"type": "arm"}}}])
    h, _ = host(table={("list", "-l", "5"): (0, bad, "")})
    with pytest.raises(ToolstackError, match="no type pv, pvh or hvm"):
        h.domain_type(5)


# ----- suspend and resume


def test_suspend_writes_the_request_and_waits_for_shutdown_suspend():
    guest = FakeGuest()
    h, _ = host(guest)
    h.suspend(5)
    assert guest.log == ["write /local/domain/5/control/shutdown=b'suspend'"]
    assert h.info(5).suspended and h.info(5).state == "shutdown(suspend)"
    h.suspend(5)  # already suspended: nothing more asked
    assert len(guest.log) == 1
    h.resume(5)
    assert guest.log[-1] == "resume 5 fast=True"
    assert h.info(5).state == "running"


def test_a_guest_that_never_acknowledges_times_out_and_the_request_is_withdrawn():
    guest = FakeGuest(ack_after=None)
    h, _ = host(guest)
    with pytest.raises(SuspendTimeout) as e:
        h.suspend(5, timeout=0.05)
    assert e.value.domid == 5 and "did not acknowledge" in str(e.value)
    assert guest.store["/local/domain/5/control/shutdown"] == b""
    assert h.info(5).state == "running"
    with pytest.raises(ToolstackError, match="not suspended"):
        h.resume(5)  # never suspended: nothing to resume


def test_a_guest_that_acknowledges_but_does_not_suspend_times_out():
    guest = FakeGuest(down_after=None)
    h, _ = host(guest)
    with pytest.raises(SuspendTimeout, match="acknowledged the suspend request but did not"):
        h.suspend(5, timeout=0.05)


def test_a_guest_that_crashes_or_vanishes_instead_is_an_error():
    h, _ = host(FakeGuest(reason=3))
    with pytest.raises(ToolstackError, match=r"is shutdown\(crash\) instead"):
        h.suspend(5)
    h, _ = host(FakeGuest(vanish=True))
    with pytest.raises(DomainNotFound, match="no domain 5"):
        h.suspend(5)
    h, _ = host(FakeGuest())
    with pytest.raises(DomainNotFound):
        h.suspend(6)


def test_binding_failures_are_toolstack_errors():
    guest = FakeGuest()
    h, _ = host(guest)
    h.suspend(5)
    guest.resume_error = OSError(22, "xc_domain_resume: Invalid argument")
    with pytest.raises(ToolstackError, match="resuming domain 5: OSError"):
        h.resume(5)

    class Broken(FakeGuest):
        def xs_write(self, path, value):
            raise RuntimeError("xenstore is down")

    h, _ = host(Broken())
    with pytest.raises(ToolstackError, match="xenstore write /local/domain/5/control/shutdown"):
        h.suspend(5)


# ----- the bindings


class FakeXc:
    """What Debian's xen.lowlevel.xc.xc() offers that XenHost uses."""

    def __init__(self):
        self.domains = {0: {}, 5: {"shutdown": 1, "shutdown_reason": 2}}
        self.calls = []

    def domain_getinfo(self, first_dom=0, max_doms=1024):
        self.calls.append(("domain_getinfo", first_dom, max_doms))
        return [{"domid": d, "dying": 0, "shutdown": v.get("shutdown", 0),
                 "shutdown_reason": v.get("shutdown_reason", 0), "paused": 0}
                for d, v in sorted(self.domains.items()) if d >= first_dom][:max_doms]

    def domain_resume(self, dom, fast):
        self.calls.append(("domain_resume", dom, fast))


class FakeXs:
    def __init__(self):
        self.nodes = {}

    def read(self, th, path):
        return self.nodes.get(path)

    def write(self, th, path, data):
        assert th == ""  # no transaction
        self.nodes[path] = data


def test_lowlevel_bindings_calls():
    xc, xs = FakeXc(), FakeXs()
    b = LowLevelBindings(xc, xs)
    assert b.info(5) == DomainInfo(5, False, True, 2, False)
    assert b.info(3) is None  # getinfo returns the next domain, 5
    b.resume(5, True)
    assert xc.calls[-1] == ("domain_resume", 5, 1)
    b.xs_write("/local/domain/5/control/shutdown", b"suspend")
    assert b.xs_read("/local/domain/5/control/shutdown") == b"suspend"
    assert b.xs_read("/nothing") is None


def test_lowlevel_bindings_are_imported_from_the_release_directory(tmp_path, monkeypatch):
    pkg = tmp_path / "xen-4.20" / "lib" / "python" / "xen" / "lowlevel"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "xc.py").write_text("class Error(Exception):\n    pass\n"
                               "class xc:\n    def __init__(self):\n        self.opened = True\n")
    (pkg / "xs.py").write_text("class xs:\n    pass\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("xen", "xen.lowlevel", "xen.lowlevel.xc", "xen.lowlevel.xs"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    b = LowLevelBindings.load("4.20", prefix=str(tmp_path))
    assert b.xc.opened and b.xc_error.__module__ == "xen.lowlevel.xc"
    assert str(tmp_path / "xen-4.20" / "lib" / "python") in sys.path
    for name in ("xen", "xen.lowlevel", "xen.lowlevel.xc", "xen.lowlevel.xs"):
        sys.modules.pop(name, None)


def test_without_a_hypervisor_both_ways_fail_with_one_clear_error(monkeypatch):
    """No Xen here: Debian's bindings (where they import) and libxenctrl
    through ctypes both fail to open; XenHost says why, for each."""
    monkeypatch.setattr(LowLevelBindings, "load", classmethod(
        lambda cls, release, prefix=str(DEBIAN_ROOT / "usr" / "lib"):
        LowLevelBindings.__dict__["load"].__func__(cls, release, prefix)))
    h = XenHost(release=XEN_RELEASE, run=FakeXl({}))
    with pytest.raises(ToolstackError) as e:
        h.info(0)
    text = str(e.value)
    assert f"cannot reach Xen {XEN_RELEASE}'s xenstore and libxenctrl" in text
    assert "xen.lowlevel:" in text and "ctypes:" in text


def test_unknown_bindings_choice():
    with pytest.raises(ToolstackError, match="unknown bindings 'nope'"):
        XenHost(bindings="nope", release="4.20").info(0)


def test_ctypes_bindings_need_the_release_libraries():
    with pytest.raises(ImportError, match="cannot load Xen 4.99's libraries"):
        CtypesBindings("4.99")


def test_hypervisor_release_from_sysfs(tmp_path):
    assert hypervisor_release(str(tmp_path / "none")) is None
    (tmp_path / "major").write_text("4\n")
    (tmp_path / "minor").write_text("20\n")
    assert hypervisor_release(str(tmp_path)) == "4.20"
    (tmp_path / "minor").write_text("x\n")
    assert hypervisor_release(str(tmp_path)) is None


def test_debian_bindings_import_on_this_python_when_built_for_it():
    """Debian's own xen.lowlevel.xc of the release built for (unpacked by
    bootstrap) imports here when it is built for this Python, and its
    handle fails cleanly without a hypervisor."""
    where = DEBIAN_ROOT / "usr" / "lib" / f"xen-{XEN_RELEASE}" / "lib" / "python"
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    if not list(Path(where, "xen", "lowlevel").glob(f"xc.{tag}-*.so")):
        pytest.skip(f"Debian's xen.lowlevel bindings for {tag} are not unpacked at {where}")
    with pytest.raises(Exception) as e:
        LowLevelBindings.load(XEN_RELEASE, prefix=str(DEBIAN_ROOT / "usr" / "lib"))
    assert type(e.value).__module__ == "xen.lowlevel.xc", e.value
    for name in ("xen", "xen.lowlevel", "xen.lowlevel.xc", "xen.lowlevel.xs"):
        sys.modules.pop(name, None)
