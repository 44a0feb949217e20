"""Fixtures of the migration tests: two simulated hosts, each helper, and a
receiver running in a thread of the test."""

from __future__ import annotations

import socket
import threading
from typing import Any, Dict, Optional

import pytest

import xensr
from xensr.migrate import receive_domain
from xensr.testing import SimulatedHost


class Hosts:
    def __init__(self, tmp_path, helper: str):
        self.src = SimulatedHost(tmp_path / "src")
        self.dst = SimulatedHost(tmp_path / "dst")
        self.src.record_destroyed = True
        self.helper = helper

    def close(self) -> None:
        self.src.close()
        self.dst.close()

    def send_kw(self) -> Dict[str, Any]:
        return {"helper": self.helper, "env": self.src.env}

    def recv_kw(self) -> Dict[str, Any]:
        return {"helper": self.helper, "env": self.dst.env}


@pytest.fixture(params=["xensr", "debian"])
def hosts(request, tmp_path, simhost_libs):
    """A source and a destination host, with xensr's helper on both sides,
    then Debian's libxl-save-helper on both sides."""
    if request.param == "xensr":
        helper = xensr.helper_path()
    else:
        helper = str(request.getfixturevalue("debian_helper"))
    h = Hosts(tmp_path, helper)
    yield h
    h.close()


@pytest.fixture
def xhosts(tmp_path, simhost_libs):
    """The two hosts with xensr's helper only (fault tests)."""
    h = Hosts(tmp_path, xensr.helper_path())
    yield h
    h.close()


class ReceiverThread:
    """receive_domain on one end of a socket pair, in a thread."""

    def __init__(self, sock: socket.socket, fn: Any):
        self.sock = sock
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Any) -> None:
        try:
            self.result = fn(self.sock.fileno())
        except BaseException as e:  # handed to the test
            self.error = e
        finally:
            self.sock.close()

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the receiver did not finish"


def start_receiver(hosts: Hosts, sock: socket.socket, **kw: Any) -> ReceiverThread:
    opts = dict(hosts.recv_kw())
    opts.update(kw)
    return ReceiverThread(sock, lambda fd: receive_domain(hosts.dst, fd, fd, **opts))
