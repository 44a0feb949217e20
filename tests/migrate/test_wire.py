"""The bytes of a migration, in both roles, against xl's: the constants
(the lengths xl writes, NULs included or not), the xl header, the rune
that starts the receiver, and a transcript of whole exchanges."""

from __future__ import annotations

import os
import shlex
import socket
import stat
import struct
import subprocess
import sys
import threading

import pytest

from tests.support.fixtures import ROOT
from xensr import stream
from xensr.migrate import (BANNER, GO, READY, REPORT, TargetFailed, migrate_domain,
                           receive_domain)
from xensr.migrate import wire as W
from xensr.errors import ToolstackError
from xensr.testing import SimulatedHost

from .conftest import ReceiverThread, start_receiver


# xl.h's strings and how xl writes them (MIGRATION.md §3.1).
XL_BANNER = b"xl migration receiver ready, send binary domain data.\n"
XL_READY = b"domain received, ready to unpause\x00"
XL_GO = b"domain is yours, you are cleared to unpause\x00"
XL_REPORT = b"my copy unpause results are as follows\x00"
XL_MAGIC = b"Xen saved domain, xl format\n \x00 \r"


def test_constants():
    assert (BANNER, len(BANNER)) == (XL_BANNER, 54) and b"\0" not in BANNER
    assert (READY, len(READY)) == (XL_READY, 34)
    assert (GO, len(GO)) == (XL_GO, 44)
    assert (REPORT, len(REPORT)) == (XL_REPORT, 39)
    assert (W.STATUS_OK, W.STATUS_BAD_GO, W.STATUS_FAIL) == (0, 0xFF, 3)
    assert (W.INCOMING_SUFFIX, W.MIGRATEDAWAY_SUFFIX) == ("--incoming", "--migratedaway")


def test_rune():
    assert W.rune("host2") == "exec ssh host2 xl migrate-receive"
    args = W.receiver_args(progress_cr=True, no_daemon=True, paused=True)
    assert W.rune("host2", receiver=args) == "exec ssh host2 xl -t migrate-receive -e -p"
    args = W.receiver_args(program="xensr", progress_cr=True, timestamps=True, verbose=2,
                           no_daemon=True, debug=True, paused=True)
    assert " ".join(args) == "xensr -t -T -v -v migrate-receive -e -d -p"
    assert W.rune("h", ssh_command="ssh -p 2222", receiver=args).startswith("exec ssh -p 2222 h xensr")
    # -s '': HOST is the whole command, nothing appended.
    assert W.rune("xl migrate-receive", ssh_command="", receiver=args) == "xl migrate-receive"


class Recorder:
    """A link that records each direction's bytes, in order of arrival."""

    def __init__(self):
        self.sender, self._a = socket.socketpair()
        self._b, self.receiver = socket.socketpair()
        self.to_receiver = bytearray()
        self.to_sender = bytearray()
        self.order = []     # ("S" or "R", length) runs
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _note(self, who, n):
        if self.order and self.order[-1][0] == who:
            self.order[-1] = (who, self.order[-1][1] + n)
        else:
            self.order.append((who, n))

    def _run(self):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self._a, selectors.EVENT_READ)
        sel.register(self._b, selectors.EVENT_READ)
        open_ = 2
        try:
            while open_:
                for key, _ in sel.select():
                    data = key.fileobj.recv(1 << 20)
                    if key.fileobj is self._a:
                        if not data:
                            sel.unregister(self._a)
                            self._b.shutdown(socket.SHUT_WR)
                            open_ -= 1
                            continue
                        self.to_receiver += data
                        self._note("S", len(data))
                        self._b.sendall(data)
                    else:
                        if not data:
                            sel.unregister(self._b)
                            self._a.shutdown(socket.SHUT_WR)
                            open_ -= 1
                            continue
                        self.to_sender += data
                        self._note("R", len(data))
                        self._a.sendall(data)
        finally:
            sel.close()
            self._a.close()
            self._b.close()

    def close(self):
        self.sender.close()
        self.thread.join(30)


def _exchange(hosts, dst=None, kind="pv"):
    dom = hosts.src.create_domain(4, name="guest", kind=kind, dirty_pages=8)
    rec = Recorder()
    host = dst or hosts.dst
    rx = ReceiverThread(rec.receiver, lambda fd: receive_domain(host, fd, fd, **hosts.recv_kw()))
    err = None
    try:
        err = migrate_domain(hosts.src, dom, rec.sender, **hosts.send_kw())
    except Exception as e:
        err = e
    finally:
        rec.close()
        rx.join()
    return dom, rec, err, rx


def _split_sender_bytes(data: bytes):
    """xl header, config, libxl stream, and what follows the stream."""
    magic, order, mflags, oflags, optlen = struct.unpack("=32sIIII", data[:48])
    return (magic, order, mflags, oflags, optlen), data[48:48 + optlen], data[48 + optlen:]


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_transcript(hosts, kind, tmp_path, verify_stream, counts):
    """A whole exchange as the wire carries it."""
    _, rec, err, rx = _exchange(hosts, kind=kind)
    assert not isinstance(err, BaseException) and rx.error is None
    assert err.stream_bytes == len(rec.to_receiver) - 44
    # Receiver -> sender: banner, ready, report and status 0; nothing else.
    assert bytes(rec.to_sender) == XL_BANNER + XL_READY + XL_REPORT + b"\x00"
    # The turns: R banner, S header+stream, R ready, S GO, R report.
    assert [who for who, _ in rec.order] == ["R", "S", "R", "S", "R"]
    assert rec.order[0][1] == 54 and rec.order[2][1] == 34 and rec.order[3][1] == 44
    assert rec.order[4][1] == 40
    # Sender -> receiver: the xl header (native order), the JSON
    # configuration with its NUL, the libxl stream, then GO.
    data = bytes(rec.to_receiver)
    assert data.endswith(XL_GO)
    (magic, order, mflags, oflags, optlen), opt, rest = _split_sender_bytes(data[:-44])
    assert magic == XL_MAGIC and data[32:36] == struct.pack("=I", 0x01020304)
    assert sys.byteorder == "little" and data[32:36] == b"\x04\x03\x02\x01"
    assert (mflags, oflags) == (3, 0)
    (clen,) = struct.unpack("=I", opt[:4])
    assert optlen == 4 + clen and opt[-1:] == b"\0" and b"\0" not in opt[4:-1]
    assert clen == len(opt[4:-1]) + 1
    import json
    cfg = json.loads(opt[4:-1])
    assert cfg["c_info"]["name"] == "guest" and cfg["c_info"]["domid"] == 0
    assert cfg["c_info"]["type"] == kind
    # The stream is a valid xl save file, header included, with nothing
    # after its END...
    path = tmp_path / "wire.xl"
    path.write_bytes(data[:-44])
    summary = stream.scan_file(str(path)).to_dict()
    assert summary["valid"] and summary["end_offset"] == len(data) - 44
    # ...and Debian's verify-stream-v2 accepts its libxl part.
    lx = tmp_path / "wire.libxl"
    lx.write_bytes(rest)
    p = verify_stream(lx, "libxl")
    assert p.returncode == 0, p.stdout + p.stderr


class RefusesUnpause(SimulatedHost):
    def unpause(self, domid):
        raise ToolstackError("no", domid)


def test_transcript_failed_start(xhosts, counts):
    """A failed start on the receiver: status 3 (ERROR_FAIL negated), then
    GO back, which lets the sender resume."""
    _, rec, err, rx = _exchange(xhosts, dst=RefusesUnpause(xhosts.dst.state_dir))
    assert isinstance(err, TargetFailed) and err.status == 3
    assert bytes(rec.to_sender) == XL_BANNER + XL_READY + XL_REPORT + b"\x03" + XL_GO
    assert bytes(rec.to_receiver).endswith(XL_GO)


def test_receiver_bytes_to_a_scripted_sender(xhosts, counts):
    """The receiver role against a sender written here byte by byte from
    xl's layout (not xensr's sender): what it answers and when."""
    hosts = xhosts
    # A stream to send: an xl save file of a guest, written by xensr's save.
    from xensr.xlfile import save_domain_to_file
    dom = hosts.src.create_domain(4, name="guest")
    path = hosts.src.state_dir / "g.save"

    class Cb:
        def suspend(self):
            hosts.src.suspend(dom)
            return True

    cfg = b'{"c_info": {"type": "pv", "name": "scripted"}, "b_info": {"max_memkb": 4096}}'
    save_domain_to_file(dom, path, Cb(), config=cfg, env=hosts.src.env)
    body = path.read_bytes()
    assert body[:32] == XL_MAGIC
    a, b = socket.socketpair()
    rx = start_receiver(hosts, b)
    try:
        def read_exactly(n):
            buf = b""
            while len(buf) < n:
                chunk = a.recv(n - len(buf))
                assert chunk, "receiver closed early"
                buf += chunk
            return buf
        assert read_exactly(54) == XL_BANNER
        a.sendall(body)
        assert read_exactly(34) == XL_READY
        new = hosts.dst.lookup("scripted--incoming")
        assert hosts.dst.domain_state(new)["state"] == "paused"
        a.sendall(XL_GO)
        assert read_exactly(40) == XL_REPORT + b"\x00"
        assert a.recv(1) == b""             # then it closes
    finally:
        a.close()
        rx.join()
    assert rx.error is None
    assert hosts.dst.domain_state(hosts.dst.lookup("scripted"))["state"] == "running"


def test_ssh_command_line(tmp_path, simhost_libs, counts):
    """`xensr migrate -s CMD` runs `sh -c "exec CMD HOST PROGRAM [-t] ...
    migrate-receive [-e] [-d] [-p]"`: a stand-in for ssh records its
    arguments and runs the receiver here."""
    src, dst = SimulatedHost(tmp_path / "a"), SimulatedHost(tmp_path / "b")
    try:
        src.create_domain(4, name="guest")
        argv_file = tmp_path / "argv"
        fake = tmp_path / "fake-ssh"
        fake.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$@\" > {shlex.quote(str(argv_file))}\n"
            "shift\n"
            f"XENSR_SIMHOST_DIR={shlex.quote(str(dst.state_dir))} "
            f"exec {shlex.quote(sys.executable)} -m \"$@\"\n")
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        env = dict(os.environ, XENSR_SIMHOST_DIR=str(src.state_dir), PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, "-m", "xensr", "-v", "migrate", "-s", str(fake),
                            "--remote-program", "xensr", "-e", "-p", "--debug", "guest", "host2"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert argv_file.read_text().split("\n")[:-1] == [
            "host2", "xensr", "-v", "migrate-receive", "-e", "-d", "-p"]
        assert dst.domain_state(dst.lookup("guest"))["state"] == "paused"
    finally:
        src.close()
        dst.close()
