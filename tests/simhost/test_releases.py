"""The simulated host per Xen release: what libxenguest writes differently
from one release to the next, simulated as simhost/releases.py says.

Each release's libraries are built here (with xensr's helper against them,
as setup.py would on a host with that Xen), whatever Xen is installed."""

from __future__ import annotations

import os
import struct
import threading

import pytest

from tests.simhost.cbuild import RELEASES, build_for_release
from tests.support import stream as st
from tests.support.parent import (
    CBFLAGS_RESTORE_COLO, CBFLAGS_SAVE_COLO, Replies, restore_args, run_helper, save_args,
)
from tests.support.simhost import XCFLAGS_LIVE, assert_completed, save_to_file

# 4.17, the first release with the other names and back channel, and 4.20.
SAMPLED = ("4.17", "4.18", "4.20")
DIRTY_PFN_LIST = st.TYPE["CHECKPOINT_DIRTY_PFN_LIST"]


@pytest.fixture(scope="module", params=SAMPLED)
def release(request, tmp_path_factory):
    helper, libdir = build_for_release(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, helper, libdir


def release_env(host, libdir):
    return dict(host.env, LD_LIBRARY_PATH=f"{libdir}:{host.env['LD_LIBRARY_PATH']}")


def test_domain_header_carries_the_release(release, simulated_host, tmp_path):
    """The libxc domain header names the hypervisor's version, and a
    restore logs it ("from Xen 4.20")."""
    name, helper, libdir = release
    host = simulated_host
    env = release_env(host, libdir)
    dom = host.create_domain(1, kind="pv")
    t, data = save_to_file(helper, host, dom, tmp_path / "s", env=env)
    assert_completed(t)
    st.parse(data)
    major, minor = struct.unpack_from("=II", data, 24 + 8)
    assert f"{major}.{minor}" == name


def forward(src: int, dst: int, seen: bytearray) -> None:
    """Copy SRC to DST until EOF, keeping what passed."""
    while True:
        chunk = os.read(src, 65536)
        if not chunk:
            break
        seen += chunk
        os.write(dst, chunk)
    os.close(src)


def colo(helper, host, env, kind):
    """A COLO primary and secondary with three checkpoints; the back channel
    goes through this process, which keeps what the secondary wrote."""
    dom = host.create_domain(4, kind=kind, dirty_pages=30)
    target = host.create_empty_domain()
    io_r, io_w = os.pipe()
    sec_r, sec_w = os.pipe()        # secondary -> here
    pri_r, pri_w = os.pipe()        # here -> primary
    out, seen = {}, bytearray()

    def primary():
        out["save"] = run_helper(
            helper, "save", save_args(dom, XCFLAGS_LIVE, CBFLAGS_SAVE_COLO, 2),
            io_fd=io_w, back_fd=pri_r, env=env, timeout=60,
            replies=Replies({"wait_checkpoint": [1, 1, 0]}), close_after_spawn=(io_w,))

    def secondary():
        out["restore"] = run_helper(
            helper, "restore", restore_args(target, cbflags=CBFLAGS_RESTORE_COLO,
                                            stream_type=2),
            io_fd=io_r, back_fd=sec_w, env=env, timeout=60,
            close_after_spawn=(io_r, sec_w))

    threads = [threading.Thread(target=primary), threading.Thread(target=secondary),
               threading.Thread(target=forward, args=(sec_r, pri_w, seen))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    os.close(pri_w)
    os.close(pri_r)
    return out["save"], out["restore"], bytes(seen), dom, target


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_colo_back_channel(release, simulated_host, kind):
    """Up to 4.17 the secondary's empty dirty pfn list is an 8-byte header
    and three checkpoints pass.  From 4.18 it is 16 bytes (the zero pad of
    libxenguest's record struct); the primary reads 8 and takes the pad for
    the next list's header: record type 0 at the third checkpoint, so the
    save fails there and the secondary fails over to the second."""
    name, helper, libdir = release
    host = simulated_host
    s, r, seen, dom, target = colo(helper, host, release_env(host, libdir), kind)
    size = RELEASES.colo_back_header(name)
    assert size == (8 if name == "4.17" else 16)
    one = struct.pack("=II", DIRTY_PFN_LIST, 0).ljust(size, b"\0")
    assert_completed(r)
    assert "COLO Failover" in r.log_text()
    per_cp = ["checkpoint", "restore_results", "postcopy", "wait_checkpoint", "suspend"]
    if size == 8:
        assert_completed(s)
        assert seen == one * 3
        assert r.calls == ["static_data_done", *per_cp * 3, "restore_results", "complete"]
        assert host.memory_digest(target) == host.memory_digest(dom)
        return
    assert_completed(s, retval=-1)
    assert s.complete["errnoval"] == 22
    assert "Expect dirty bitmap record, but received 0" in s.log_text()
    body = ["suspend", "checkpoint", "postcopy", "wait_checkpoint"] * 2 + ["suspend"]
    logdirty = ["switch_qemu_logdirty"] if kind == "hvm" else []
    assert s.calls == [*logdirty, *body, *logdirty, "complete"]
    assert seen == one * 2
    assert r.calls == ["static_data_done", *per_cp * 2, "restore_results", "complete"]
