"""A migration's failures: typed errors naming the stage on both sides,
the source guest safe (running, memory unchanged, log-dirty off), nothing
left on the destination, no fd or child process leaked."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.support.fixtures import ROOT
from xensr.errors import ToolstackError
from xensr.migrate import (BANNER, HandshakeUndefined, MigrationError, PeerClosed,
                           TargetFailed, UnexpectedMessage, migrate_domain)
from xensr.migrate import receiver as R
from xensr.migrate.engine import Exchange, Write
from xensr.testing import SimulatedHost

from .conftest import ReceiverThread, start_receiver


def source(hosts, memory=8, **kw):
    """A guest that dirties no memory, so that its memory must come out
    of a failed migration exactly as it went in."""
    dom = hosts.src.create_domain(memory, name="guest", dirty_pages=0, **kw)
    return dom, hosts.src.memory_digest(dom)


def assert_source_safe(hosts, dom, digest, state="running"):
    s = hosts.src.domain_state(dom)
    assert s["state"] == state
    assert s["logdirty"] is False
    assert s["name"] == "guest"
    assert hosts.src.memory_digest(dom) == digest


def assert_destination_clean(hosts):
    assert hosts.dst.domain_ids() == []


class Cutter:
    """A link between two socket pairs that can be cut: copies both ways
    in a thread, and after ``after`` bytes from the sender (or on cut())
    closes both ends."""

    def __init__(self, after=None):
        self.sender, self._a = socket.socketpair()
        self._b, self.receiver = socket.socketpair()
        self.after = after
        self.passed = 0
        self._cut = threading.Event()
        self._r, self._w = os.pipe()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def cut(self):
        self._cut.set()
        os.write(self._w, b"x")

    def _run(self):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self._a, selectors.EVENT_READ)
        sel.register(self._b, selectors.EVENT_READ)
        sel.register(self._r, selectors.EVENT_READ)
        try:
            while not self._cut.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._r:
                        break
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    if key.fileobj is self._a:
                        if self.after is not None and self.passed + len(data) >= self.after:
                            return
                        self.passed += len(data)
                        self._b.sendall(data)
                    else:
                        self._a.sendall(data)
        finally:
            sel.close()
            # Cut: both ends see the connection go.
            self._a.close()
            self._b.close()

    def close(self):
        self.cut()
        self.thread.join(30)
        os.close(self._r)
        os.close(self._w)
        self.sender.close()


@pytest.fixture(params=["splice", "copy"])
def relay_mode(request, monkeypatch):
    """The relay with splice(2), then with read/write copies (its way where
    the transport cannot take a splice)."""
    if request.param == "copy":
        monkeypatch.delattr(os, "splice")
    return request.param


def test_link_cut_during_precopy(hosts, relay_mode, counts):
    dom, digest = source(hosts)
    link = Cutter(after=1 << 20)
    rx = start_receiver(hosts, link.receiver)
    try:
        with pytest.raises(MigrationError) as e:
            migrate_domain(hosts.src, dom, link.sender, **hosts.send_kw())
    finally:
        link.close()
        rx.join()
    assert isinstance(e.value, PeerClosed)
    assert e.value.stage == "stream" and e.value.side == "sender"
    assert e.value.source == "untouched"
    assert isinstance(rx.error, MigrationError) and rx.error.stage == "stream"
    assert rx.error.destination == "destroyed"
    assert_source_safe(hosts, dom, digest)
    assert_destination_clean(hosts)


def test_link_cut_after_the_suspend(hosts, relay_mode, counts):
    dom, digest = source(hosts)
    link = Cutter()

    class Cb:
        def suspend(self):
            hosts.src.suspend(dom)
            link.cut()
            return True

    rx = start_receiver(hosts, link.receiver)
    try:
        with pytest.raises(MigrationError) as e:
            migrate_domain(hosts.src, dom, link.sender, Cb(), **hosts.send_kw())
    finally:
        link.close()
        rx.join()
    assert e.value.stage in ("stream", "ready") and e.value.source == "resumed"
    assert isinstance(rx.error, MigrationError) and rx.error.stage == "stream"
    assert_source_safe(hosts, dom, digest)
    assert_destination_clean(hosts)


def test_not_ready(xhosts, counts):
    """A receiver that answers something else than "ready"."""
    hosts = xhosts
    dom, digest = source(hosts)
    a, b = socket.socketpair()

    def fake(fd):
        yield Write(fd, BANNER)
        yield from R.read_preamble(fd)
        yield from R.copy_stream(fd, lambda data: None)
        yield Write(fd, b"domain received, ready to unpaus!\0")

    rx = ReceiverThread(b, lambda fd: Exchange(fake(fd), (fd,), "fake").run())
    try:
        with pytest.raises(UnexpectedMessage) as e:
            migrate_domain(hosts.src, dom, a, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert e.value.stage == "ready" and e.value.source == "resumed"
    assert e.value.received == b"domain received, ready to unpaus!\0"
    assert_source_safe(hosts, dom, digest)


class FailingUnpause(SimulatedHost):
    def unpause(self, domid):
        raise ToolstackError("unpause refused", domid)


def test_failed_unpause(xhosts, tmp_path, counts):
    """The receiver reports a failed start: it destroys its copy and sends
    GO back; the source is renamed back and resumed."""
    hosts = xhosts
    dom, digest = source(hosts)
    dst = FailingUnpause(hosts.dst.state_dir)
    a, b = socket.socketpair()
    from xensr.migrate import receive_domain
    rx = ReceiverThread(b, lambda fd: receive_domain(dst, fd, fd, **hosts.recv_kw()))
    try:
        with pytest.raises(TargetFailed) as e:
            migrate_domain(hosts.src, dom, a, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert e.value.stage == "report" and e.value.status == 3 and e.value.source == "resumed"
    assert isinstance(rx.error, MigrationError) and rx.error.stage == "go"
    assert rx.error.destination == "destroyed"
    assert_source_safe(hosts, dom, digest)
    assert_destination_clean(hosts)


def test_unrestorable_stream(hosts, counts):
    """The receiver cannot restore the stream (its helper fails at a page)."""
    dom, digest = source(hosts)
    hosts.dst.set_fault("fail-at-page:300@restore")
    a, b = socket.socketpair()
    rx = start_receiver(hosts, b)
    try:
        with pytest.raises(MigrationError) as e:
            migrate_domain(hosts.src, dom, a, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert e.value.stage in ("stream", "ready") and e.value.source in ("untouched", "resumed")
    assert isinstance(rx.error, MigrationError) and rx.error.stage == "stream"
    assert rx.error.destination == "destroyed"
    assert_source_safe(hosts, dom, digest)
    assert_destination_clean(hosts)


def test_guest_never_suspends(xhosts, counts):
    """A guest that ignores the suspend request is not resumed (xl's rule)
    and keeps running; log-dirty is off again."""
    hosts = xhosts
    dom, digest = source(hosts, ignore_suspend=True)
    a, b = socket.socketpair()
    rx = start_receiver(hosts, b)
    try:
        with pytest.raises(MigrationError) as e:
            migrate_domain(hosts.src, dom, a, suspend_timeout=1.0, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert e.value.stage == "stream" and e.value.source == "not-resumed"
    assert "did not acknowledge" in str(e.value)
    assert isinstance(rx.error, MigrationError)
    assert_source_safe(hosts, dom, digest)
    assert_destination_clean(hosts)


def test_bad_banner(xhosts, counts):
    hosts = xhosts
    dom, digest = source(hosts)
    a, b = socket.socketpair()
    b.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n" + b"x" * 20)
    try:
        with pytest.raises(UnexpectedMessage) as e:
            migrate_domain(hosts.src, dom, a, **hosts.send_kw())
    finally:
        a.close()
        b.close()
    assert e.value.stage == "banner" and e.value.source == "untouched"
    assert_source_safe(hosts, dom, digest)


def test_receiver_gone_before_banner(xhosts, counts):
    hosts = xhosts
    dom, digest = source(hosts)
    a, b = socket.socketpair()
    b.close()
    try:
        with pytest.raises(PeerClosed) as e:
            migrate_domain(hosts.src, dom, a, **hosts.send_kw())
    finally:
        a.close()
    assert e.value.stage == "banner"
    assert_source_safe(hosts, dom, digest)


def test_no_go(xhosts, counts):
    """The sender vanishes after "ready": the receiver reports 0xFF,
    destroys its copy."""
    hosts = xhosts
    src = hosts.src
    dom = src.create_domain(4, name="guest", dirty_pages=0)
    a, b = socket.socketpair()
    rx = start_receiver(hosts, b)

    # The real sender, stopped after ready: its host refuses the rename.
    class NoRename(SimulatedHost):
        def rename(self, domid, name):
            raise ToolstackError("rename refused", domid)

    try:
        with pytest.raises(MigrationError) as e:
            migrate_domain(NoRename(src.state_dir), dom, a, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert e.value.stage == "go" and e.value.source == "resumed"
    assert isinstance(rx.error, MigrationError) and rx.error.stage == "go"
    assert rx.error.destination == "destroyed"
    assert_destination_clean(hosts)
    assert src.domain_state(dom)["state"] == "running"


# ----------------------------------------------------------------------
# Killed processes: the commands, with SIGTERM (Ctrl-C's path)

def _xensr(*args):
    return [sys.executable, "-m", "xensr", *args]


def _wait_for(predicate, what, limit=600):
    for _ in range(limit):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_receiver_killed_before_ready(xhosts, counts):
    hosts = xhosts
    # 16 batches of 1024 pages, a second each: time enough to be killed in.
    dom, digest = source(hosts, memory=64)
    env = dict(os.environ, XENSR_SIMHOST_DIR=str(hosts.dst.state_dir), PYTHONPATH=str(ROOT),
               XENSR_SIMHOST_FAULT="stall:1000@restore")
    a, b = socket.socketpair()
    proc = subprocess.Popen(_xensr("migrate-receive"), stdin=b, stdout=b, env=env,
                            stderr=subprocess.PIPE)
    b.close()
    killer = threading.Thread(target=lambda: (
        _wait_for(lambda: hosts.dst.domain_ids(), "the incoming domain"),
        proc.send_signal(signal.SIGTERM)), daemon=True)
    killer.start()
    try:
        with pytest.raises(MigrationError) as e:
            migrate_domain(hosts.src, dom, a, **hosts.send_kw())
    finally:
        a.close()
        killer.join(60)
        _, err = proc.communicate(timeout=60)
    assert e.value.stage in ("stream", "ready")
    assert proc.returncode == 130 and b"interrupted" in err
    assert_source_safe(hosts, dom, digest)
    assert_destination_clean(hosts)


def test_sender_killed_mid_stream(xhosts, counts):
    hosts = xhosts
    # 16 batches of 1024 pages, a second each: time enough to be killed in.
    dom, digest = source(hosts, memory=64)
    receiver = (f"XENSR_SIMHOST_DIR={shlex.quote(str(hosts.dst.state_dir))} "
                f"{shlex.quote(sys.executable)} -m xensr migrate-receive")
    env = dict(os.environ, XENSR_SIMHOST_DIR=str(hosts.src.state_dir), PYTHONPATH=str(ROOT))
    env["XENSR_SIMHOST_FAULT"] = "stall:1000@save"
    proc = subprocess.Popen(_xensr("migrate", "-s", "", "guest", receiver), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: hosts.src.domain_state(dom)["logdirty"], "the live save")
        _wait_for(lambda: hosts.dst.domain_ids(), "the incoming domain")
        proc.send_signal(signal.SIGTERM)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"the source domain was put back" in err
    assert b"migrate-receive" in err and b"stream" in err     # the receiver's error
    assert_source_safe(hosts, dom, digest)
    assert_destination_clean(hosts)


def test_cancelled_with_a_peer_that_stopped_reading(xhosts, relay_mode, counts):
    """asyncio: cancelling a migration whose peer stopped reading (it sent
    the banner and went quiet) stops the save, puts the source back and
    raises CancelledError: nothing waits for the stuck peer."""
    import asyncio
    from xensr.migrate import aio_migrate_domain

    hosts = xhosts
    dom, digest = source(hosts)
    a, b = socket.socketpair()
    b.sendall(BANNER)

    async def main():
        task = asyncio.ensure_future(aio_migrate_domain(hosts.src, dom, a, **hosts.send_kw()))
        for _ in range(600):
            await asyncio.sleep(0.05)
            if hosts.src.domain_state(dom)["logdirty"]:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        a.close()
        b.close()
    assert_source_safe(hosts, dom, digest)


def test_no_host(tmp_path):
    """Without $XENSR_SIMHOST_DIR the commands act on the real host: one
    line and exit 1 where there is none."""
    env = {k: v for k, v in os.environ.items() if k != "XENSR_SIMHOST_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run(_xensr("migrate", "-s", "", "guest", "true"), env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith("xensr: ") and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr


def test_progress_on_a_terminal(xhosts, counts):
    """On a terminal, a bar per pass over memory."""
    import pty
    hosts = xhosts
    hosts.src.create_domain(8, name="guest", dirty_pages=64)
    receiver = (f"XENSR_SIMHOST_DIR={shlex.quote(str(hosts.dst.state_dir))} "
                f"{shlex.quote(sys.executable)} -m xensr migrate-receive")
    env = dict(os.environ, XENSR_SIMHOST_DIR=str(hosts.src.state_dir), PYTHONPATH=str(ROOT))
    try:
        master, slave = pty.openpty()
    except OSError as e:         # a chroot with /dev but not /dev/pts
        pytest.skip(f"no pseudo-terminal here: {e}")
    try:
        proc = subprocess.Popen(_xensr("migrate", "-s", "", "guest", receiver), env=env,
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:         # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            out += chunk
        proc.communicate(timeout=60)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0, out
    text = out.decode()
    assert "Frames iteration 0" in text and "Frames iteration 1" in text
    assert "[" + "#" * 30 + "] 2048/2048 pages" in text


def test_unusable_configuration(xhosts, counts):
    """A domain whose configuration is not JSON: nothing is sent (as xl,
    which stops before contacting the receiver)."""
    hosts = xhosts
    dom, digest = source(hosts)

    class BadConfig(SimulatedHost):
        def domain_config(self, domid):
            return b"name = 'guest'\n"

    a, b = socket.socketpair()
    try:
        with pytest.raises(MigrationError) as e:
            migrate_domain(BadConfig(hosts.src.state_dir), dom, a, **hosts.send_kw())
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)
    finally:
        a.close()
        b.close()
    assert e.value.stage == "header" and e.value.source == "untouched"
    assert_source_safe(hosts, dom, digest)


def test_misspelled_option(xhosts):
    from xensr.migrate import MigrationReceiver, MigrationSender
    with pytest.raises(TypeError, match="'pasued'"):
        MigrationReceiver(xhosts.dst, 1, 0, pasued=True)
    with pytest.raises(TypeError, match="'debgu'"):
        MigrationSender(xhosts.src, 1, 1, debgu=True)


# ----------------------------------------------------------------------
# The receiver refuses what is not xl's (stage header or stream), before
# or after creating the domain, and leaves nothing behind.

def _preamble(config=b'{"c_info": {"type": "pv", "name": "guest"}, "b_info": {"max_memkb": 4096}}',
              magic=b"Xen saved domain, xl format\n \0 \r", order=0x01020304, mflags=3):
    import struct
    opt = struct.pack("=I", len(config) + 1) + config + b"\0"
    return struct.pack("=32sIIII", magic, order, mflags, 0, len(opt)) + opt


LIBXL_HEAD = bytes.fromhex("4c6962786c466d74") + (2).to_bytes(4, "big") + bytes(4)
LIBXC_CONTEXT = (1).to_bytes(4, "little") + bytes(4)


@pytest.mark.parametrize("data, stage, words", [
    (b"", "header", "closed the connection"),
    (_preamble(magic=b"Xen saved domain, xl format\n \0 \n"), "header", "bad magic"),
    (_preamble(order=0x04030201), "header", "other endianness"),
    (_preamble(mflags=7), "header", "unknown mandatory flags"),
    (_preamble(mflags=1), "header", "legacy"),
    (_preamble(mflags=2), "header", "not libxl JSON"),
    (_preamble(config=b"name = 'guest'"), "header", "names no domain"),
    (_preamble(config=b'{"c_info": {"name": ""}}'), "header", "names no domain"),
    (_preamble() + LIBXL_HEAD[:8] + bytes(8) + LIBXC_CONTEXT, "stream", "not a libxl v2 stream"),
    (_preamble() + LIBXL_HEAD + (3).to_bytes(4, "little") + bytes(4), "stream",
     "LIBXC_CONTEXT was due"),
    (_preamble() + LIBXL_HEAD + LIBXC_CONTEXT + b"\xff" * 40, "stream", "restore"),
    (_preamble() + LIBXL_HEAD + LIBXC_CONTEXT, "stream", "restore"),
])
def test_receiver_refuses(xhosts, data, stage, words, counts):
    hosts = xhosts
    a, b = socket.socketpair()
    rx = start_receiver(hosts, b)
    try:
        got = b""
        while len(got) < len(BANNER):
            got += a.recv(len(BANNER) - len(got))
        assert got == BANNER
        try:
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)
            rest = a.recv(100)
        except ConnectionResetError:    # it closed with our bytes unread
            rest = b""
    finally:
        a.close()
        rx.join()
    assert rest == b""                       # no "ready"
    assert isinstance(rx.error, MigrationError)
    assert rx.error.stage == stage and rx.error.side == "receiver", rx.error
    assert words in str(rx.error)
    assert rx.error.destination in ("none", "destroyed")
    assert_destination_clean(hosts)


# ----------------------------------------------------------------------
# After GO: xl's rules (nothing resumed or destroyed on a broken handshake)

def _fake_receiver(after_go):
    def steps(fd):
        from xensr.migrate.engine import Read
        yield Write(fd, BANNER)
        yield from R.read_preamble(fd)
        yield from R.copy_stream(fd, lambda data: None)
        yield Write(fd, b"domain received, ready to unpause\0")
        go = yield Read(fd, 44)
        assert go == b"domain is yours, you are cleared to unpause\0"
        if after_go:
            yield Write(fd, after_go)
    return lambda fd: Exchange(steps(fd), (fd,), "fake").run()


@pytest.mark.parametrize("after_go, what", [
    (b"", "closed"),
    (b"my copy unpause results are as follows\0", "status byte"),
    (b"my copy unpause results are as fallows\0\0", "expected"),
    (b"my copy unpause results are as follows\0\x05", "GO back"),
    (b"my copy unpause results are as follows\0\x05domain is yours", "GO back"),
])
def test_broken_after_go(xhosts, after_go, what, counts):
    """Past GO nothing is resumed or destroyed: the source stays suspended
    under NAME--migratedaway, and the error says the state is undefined."""
    hosts = xhosts
    dom, digest = source(hosts)
    a, b = socket.socketpair()
    rx = ReceiverThread(b, _fake_receiver(after_go))
    try:
        with pytest.raises(HandshakeUndefined) as e:
            migrate_domain(hosts.src, dom, a, **hosts.send_kw())
    finally:
        a.close()
        rx.join()
    assert rx.error is None, rx.error
    assert e.value.source == "undefined" and "undefined" in str(e.value)
    assert what in str(e.value)
    s = hosts.src.domain_state(dom)
    assert s["state"] == "suspended" and s["name"] == "guest--migratedaway"
    assert not s["logdirty"] and hosts.src.memory_digest(dom) == digest
