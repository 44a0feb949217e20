"""Live migrations between two simulated hosts over a socket pair, with
each helper on both sides."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from xensr.migrate import aio_migrate_domain, aio_receive_domain, migrate_domain
from xensr.xlfile import restore_domain_from_file

from .conftest import start_receiver


def _one(hosts, **kw):
    src, dst = hosts.src, hosts.dst
    dom = src.create_domain(8, vcpus=2, kind=kw.pop("kind", "pv"), name="guest",
                            dirty_pages=64)
    a, b = socket.socketpair()
    rx = start_receiver(hosts, b, paused=kw.pop("paused", False), debug=kw.get("debug", False))
    try:
        result = migrate_domain(src, dom, a, **hosts.send_kw(), **kw)
    finally:
        a.close()
        rx.join()
    assert rx.error is None, rx.error
    return dom, result, rx.result


@pytest.fixture(params=["splice", "copy"])
def relay_mode(request, monkeypatch):
    """The save's relay with splice(2), then with read/write copies."""
    if request.param == "copy":
        monkeypatch.delattr(os, "splice")
    return request.param


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_live_migration(hosts, kind, relay_mode, counts):
    dom, result, received = _one(hosts, kind=kind)
    src, dst = hosts.src, hosts.dst
    # The source is gone; the destination runs under the original name.
    assert dom not in src.domain_ids()
    new = dst.lookup("guest")
    assert received.domid == new and received.name == "guest"
    state = dst.domain_state(new)
    assert state["state"] == "running" and state["kind"] == kind and state["vcpus"] == 2
    assert state["logdirty"] is False
    # Its memory is the source's as it was when it was destroyed
    # (suspended, after the last pass).
    [gone] = src.destroyed()
    assert gone["name"] == "guest--migratedaway" and gone["state"] == "suspended"
    assert dst.memory_digest(new) == gone["memory"]
    # The guest dirtied memory while it was sent: more than one pass.
    live = [r for r in result.rounds if r.live]
    assert len(live) > 1 and live[0].pages == 2048
    assert all(r.pages > 0 for r in live[1:])
    assert result.save.domid == dom and received.restore.domid == new
    assert result.rounds == result.save.precopy.rounds
    # The downtime runs from the suspend (sender) over the receiver's
    # unpause (its clock is this one: the receiver is a thread here) to the
    # report; the receiver's own part from the end of the stream.
    p = result.save.precopy
    assert p.suspended_at is not None and received.unpaused_at is not None
    assert p.suspended_at <= received.unpaused_at <= p.suspended_at + result.suspended
    assert 0 <= received.unpause_seconds <= result.suspended
    assert p.suspended_time <= result.suspended <= result.elapsed


def test_paused(hosts, counts):
    _, _, received = _one(hosts, paused=True)
    assert hosts.dst.domain_state(received.domid)["state"] == "paused"
    assert received.paused
    assert received.unpaused_at is None and received.unpause_seconds is None


def test_debug_verify(hosts, tmp_path, counts):
    """--debug: the sender adds a VERIFY record and a full pass (seen in
    the stream received into a file); the receiver accepts them."""
    from xensr import stream
    from xensr.migrate import receive_to_file
    from .conftest import ReceiverThread

    _, _, received = _one(hosts, debug=True)
    assert hosts.dst.memory_digest(received.domid) == hosts.src.destroyed()[0]["memory"]

    dom = hosts.src.create_domain(4, name="other")
    path = tmp_path / "verify.save"
    a, b = socket.socketpair()
    rx = ReceiverThread(b, lambda fd: receive_to_file(path, fd, fd))
    try:
        migrate_domain(hosts.src, dom, a, debug=True, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert rx.error is None, rx.error
    by_type = stream.scan_file(str(path)).to_dict()["libxc"]["by_type"]
    assert by_type["VERIFY"]["count"] == 1


def test_many_at_once_asyncio(xhosts, counts):
    """Four migrations at once in one thread, both sides on one loop."""
    src, dst = xhosts.src, xhosts.dst
    doms = [src.create_domain(4, name=f"g{i}", dirty_pages=16) for i in range(4)]

    async def main():
        pairs = [socket.socketpair() for _ in doms]
        try:
            jobs = []
            for dom, (a, b) in zip(doms, pairs):
                jobs.append(aio_migrate_domain(src, dom, a, **xhosts.send_kw()))
                jobs.append(aio_receive_domain(dst, b.fileno(), b.fileno(), **xhosts.recv_kw()))
            return await asyncio.gather(*jobs)
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    results = asyncio.run(main())
    assert src.domain_ids() == []
    names = sorted(dst.domain_name(d) for d in dst.domain_ids())
    assert names == ["g0", "g1", "g2", "g3"]
    recorded = {r["name"]: r["memory"] for r in src.destroyed()}
    for i in range(4):
        d = dst.lookup(f"g{i}")
        assert dst.memory_digest(d) == recorded[f"g{i}--migratedaway"]
    assert len(results) == 8


def test_receive_to_file(hosts, tmp_path, counts):
    """Received into an xl save file, which then restores."""
    from xensr.migrate import receive_to_file

    src, dst = hosts.src, hosts.dst
    dom = src.create_domain(8, name="guest", dirty_pages=32)
    path = tmp_path / "guest.save"
    a, b = socket.socketpair()
    from .conftest import ReceiverThread
    rx = ReceiverThread(b, lambda fd: receive_to_file(path, fd, fd))
    try:
        migrate_domain(src, dom, a, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert rx.error is None, rx.error
    target = dst.create_empty_domain()
    restored = restore_domain_from_file(target, path, store_evtchn=1, console_evtchn=2,
                                        helper=hosts.helper, env=dst.env)
    assert restored.config_json["c_info"]["name"] == "guest"
    assert dst.memory_digest(target) == src.destroyed()[0]["memory"]


def test_many_at_once_any_loop(xhosts, counts):
    """Three senders and three receivers driven by one selector loop of
    the test's own, through fds() / handle() / next_deadline()."""
    import selectors
    import time

    from xensr.migrate import MigrationReceiver, MigrationSender

    src, dst = xhosts.src, xhosts.dst
    doms = [src.create_domain(4, name=f"h{i}", dirty_pages=16) for i in range(3)]
    pairs = [socket.socketpair() for _ in doms]
    exs = []
    for dom, (a, b) in zip(doms, pairs):
        exs.append(MigrationSender(src, dom, a.fileno(), a.fileno(), **xhosts.send_kw()))
        exs.append(MigrationReceiver(dst, b.fileno(), b.fileno(), **xhosts.recv_kw()))
    sel = selectors.DefaultSelector()
    try:
        for ex in exs:
            ex.start()
        while not all(ex.done() for ex in exs):
            owners = {}
            for ex in exs:
                for fd, ev in ex.fds():
                    owners.setdefault(fd, []).append((ex, ev))
                    try:
                        sel.register(fd, ev)
                    except KeyError:
                        sel.modify(fd, sel.get_key(fd).events | ev)
            deadlines = [d for d in (ex.next_deadline() for ex in exs) if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
            ready = sel.select(timeout)
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
            for key, ev in ready:
                for ex, want in owners.get(key.fd, []):
                    if want & ev:
                        ex.handle(key.fd, want & ev)
            for ex in exs:
                d = ex.next_deadline()
                if d is not None and time.monotonic() >= d:
                    ex.handle_timeout()
        results = [ex.result() for ex in exs]
    finally:
        sel.close()
        for ex in exs:
            ex.close()
        for a, b in pairs:
            a.close()
            b.close()
    assert src.domain_ids() == []
    assert sorted(dst.domain_name(d) for d in dst.domain_ids()) == ["h0", "h1", "h2"]
    recorded = {r["name"]: r["memory"] for r in src.destroyed()}
    for i in range(3):
        assert dst.memory_digest(dst.lookup(f"h{i}")) == recorded[f"h{i}--migratedaway"]
    assert len(results) == 6


@pytest.mark.parametrize("direction", ["xensr-to-debian", "debian-to-xensr"])
def test_mixed_helpers(tmp_path, simhost_libs, debian_helper, direction, counts):
    """xensr's helper saving and Debian's restoring, and the reverse."""
    import xensr
    from .conftest import Hosts

    ours, theirs = xensr.helper_path(), str(debian_helper)
    send, recv = (ours, theirs) if direction == "xensr-to-debian" else (theirs, ours)
    h = Hosts(tmp_path, send)
    try:
        dom = h.src.create_domain(8, name="guest", dirty_pages=64)
        a, b = socket.socketpair()
        rx = start_receiver(h, b, helper=recv)
        try:
            result = migrate_domain(h.src, dom, a, **h.send_kw())
        finally:
            a.close()
            rx.join()
        assert rx.error is None, rx.error
        assert result.save.helper == send and rx.result.restore.helper == recv
        assert h.dst.memory_digest(rx.result.domid) == h.src.destroyed()[0]["memory"]
    finally:
        h.close()


def test_pipe_transport_gets_the_relays_room(xhosts, counts):
    """Over pipes (as to ssh's stdin), the relay makes the sending pipe as
    large as its own, so that each splice can move up to Relay.CHUNK
    bytes instead of the few KiB a default 64 KiB pipe has free; the
    migration still arrives whole."""
    import fcntl
    import threading

    from xensr.migrate import receive_domain
    from xensr.migrate.engine import Relay

    src, dst = xhosts.src, xhosts.dst
    dom = src.create_domain(8, name="guest", dirty_pages=64)
    to_r, to_w = os.pipe()          # sender -> receiver (the stream)
    back_r, back_w = os.pipe()      # receiver -> sender (banner, ready, report)
    default = fcntl.fcntl(to_w, fcntl.F_GETPIPE_SZ)
    if default >= Relay.CHUNK:
        pytest.skip(f"pipes are made with {default} bytes here already")
    err = []

    def receive():
        try:
            receive_domain(dst, back_w, to_r, **xhosts.recv_kw())
        except BaseException as e:  # handed to the test
            err.append(e)

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    try:
        migrate_domain(src, dom, (to_w, back_r), **xhosts.send_kw())
        assert fcntl.fcntl(to_w, fcntl.F_GETPIPE_SZ) >= Relay.CHUNK
    finally:
        th.join(60)
        for fd in (to_r, to_w, back_r, back_w):
            os.close(fd)
    assert not th.is_alive() and not err, err
    assert dst.memory_digest(dst.lookup("guest")) == src.destroyed()[0]["memory"]


def test_relay_leaves_a_socket_transport_alone():
    from xensr.migrate.engine import Relay

    a, b = socket.socketpair()
    with a, b:
        relay = Relay(a.fileno())
        try:
            assert relay.splicing == hasattr(os, "splice")
        finally:
            relay.close()
