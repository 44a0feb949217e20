"""Two hosts on one machine: two network namespaces joined by a veth pair,
and a real OpenSSH server (Debian's openssh-server) in the second one.

    with TwoHosts(workdir) as net:
        net.start_sshd(environment={"XENSR_SIMHOST_DIR": ...})
        net.run_a(["python3", "-m", "xensr", "migrate", "-s", net.ssh_command, ...,
                   "guest", net.addr_b])

Everything is made by the harness and undone on leaving, pass or fail:
the namespaces (their veth ends go with them), the sshd process, the
keys and configuration (in ``workdir``), and ``/run/sshd`` if it had to
be made.  The server takes keys generated here, no password, its own
configuration file, and listens only on the namespace's address; each
command runs with a time limit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ["TwoHosts", "unavailable"]

SSHD = "/usr/sbin/sshd"
_NETNS_DIR = "/run/netns"
_TIMEOUT = 60


def _enter(ns: str, argv: Sequence[str]) -> List[str]:
    """``argv`` in network namespace ``ns``.  nsenter switches only the
    network namespace; ``ip netns exec`` also makes a mount namespace and
    remounts /sys, which fails in a chroot whose / is not a mount point."""
    return ["nsenter", f"--net={_NETNS_DIR}/{ns}", "--", *argv]


def _run(argv: Sequence[str], timeout: float = _TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


class _NetnsMount:
    """``ip netns add`` makes /run/netns a shared bind mount of itself the
    first time; undone when it was not one before and no namespace is left."""

    def __init__(self) -> None:
        self.was_mount = self.mounted()

    @staticmethod
    def mounted() -> bool:
        """From mountinfo: a bind mount on the same filesystem keeps its
        st_dev, so os.path.ismount cannot see it."""
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == _NETNS_DIR for line in f)

    def undo(self) -> None:
        if self.was_mount or not self.mounted():
            return
        try:
            if os.listdir(_NETNS_DIR):
                return
        except OSError:
            return
        _run(["umount", _NETNS_DIR])


def unavailable() -> Optional[str]:
    """Why two namespaces with sshd cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux, openssh-client)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (openssh-server)"
    name = f"xensr-probe-{os.getpid()}"
    mount = _NetnsMount()
    try:
        p = _run(["ip", "netns", "add", name])
        if p.returncode != 0:
            return f"cannot create a network namespace: {p.stderr.strip()}"
        p = _run(_enter(name, ["true"]))
        _run(["ip", "netns", "del", name])
        if p.returncode != 0:
            return f"cannot run in a network namespace: {p.stderr.strip()}"
    finally:
        mount.undo()
    return None


class TwoHosts:
    """Namespaces ``ns_a`` (sender) and ``ns_b`` (receiver, sshd)."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        tag = f"{os.getpid() % 100000}"
        self.ns_a = f"xensr-a-{tag}"
        self.ns_b = f"xensr-b-{tag}"
        self.veth_a = f"xva{tag}"
        self.veth_b = f"xvb{tag}"
        self.addr_a = "10.213.0.1"
        self.addr_b = "10.213.0.2"
        self.sshd: Optional[subprocess.Popen] = None
        self._made: List[str] = []
        self._run_sshd_made = False
        self._mount = _NetnsMount()

    # -- set-up and tear-down ----------------------------------------------

    def __enter__(self) -> "TwoHosts":
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ip(self, *args: str) -> None:
        p = _run(["ip", *args])
        if p.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")

    def _ip_in(self, ns: str, *args: str) -> None:
        """``ip`` in a namespace (``ip -n`` makes a mount namespace too)."""
        p = _run(_enter(ns, ["ip", *args]))
        if p.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} in {ns}: {p.stderr.strip()}")

    def _setup(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for ns in (self.ns_a, self.ns_b):
            self._ip("netns", "add", ns)
            self._made.append(ns)
        self._ip("link", "add", self.veth_a, "netns", self.ns_a, "type", "veth",
                 "peer", "name", self.veth_b, "netns", self.ns_b)
        for ns, dev, addr in ((self.ns_a, self.veth_a, self.addr_a),
                              (self.ns_b, self.veth_b, self.addr_b)):
            self._ip_in(ns, "link", "set", "lo", "up")
            self._ip_in(ns, "addr", "add", f"{addr}/24", "dev", dev)
            self._ip_in(ns, "link", "set", dev, "up")

    def close(self) -> None:
        if self.sshd is not None:
            if self.sshd.poll() is None:
                self.sshd.send_signal(signal.SIGTERM)
                try:
                    self.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    self.sshd.kill()
                    self.sshd.wait()
            self.sshd = None
        for ns in reversed(self._made):
            _run(["ip", "netns", "del", ns])
        self._made = []
        self._mount.undo()
        if self._run_sshd_made:
            try:
                os.rmdir("/run/sshd")
            except OSError:
                pass
            self._run_sshd_made = False

    # -- sshd --------------------------------------------------------------

    def _keygen(self, path: Path) -> None:
        p = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xensr-test",
                  "-f", str(path)])
        if p.returncode != 0:
            raise RuntimeError(f"ssh-keygen: {p.stderr.strip()}")

    def start_sshd(self, environment: Mapping[str, str]) -> None:
        """sshd in ns_b on addr_b:22: the client key generated here is
        the only way in, and every session gets ``environment``."""
        d = self.dir
        self._keygen(d / "host_key")
        self._keygen(d / "client_key")
        self.set_environment(environment)
        (d / "known_hosts").write_text(
            f"{self.addr_b} {(d / 'host_key.pub').read_text().split(' ', 2)[0]} "
            f"{(d / 'host_key.pub').read_text().split(' ', 2)[1]}\n")
        (d / "sshd_config").write_text("\n".join([
            f"ListenAddress {self.addr_b}",
            "Port 22",
            f"HostKey {d / 'host_key'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "PermitUserEnvironment yes",
            "UsePAM no",
            "StrictModes no",
            "LoginGraceTime 30",
            "MaxStartups 10",
            f"PidFile {d / 'sshd.pid'}",
            "",
        ]))
        if not os.path.isdir("/run/sshd"):
            os.mkdir("/run/sshd", 0o755)
            self._run_sshd_made = True
        log = open(d / "sshd.log", "w")
        try:
            self.sshd = subprocess.Popen(
                _enter(self.ns_b, [SSHD, "-D", "-e", "-f", str(d / "sshd_config")]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        for _ in range(200):
            if "Server listening" in (d / "sshd.log").read_text():
                return
            if self.sshd.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text()}")

    def set_environment(self, environment: Mapping[str, str]) -> None:
        """The environment of the next sessions (authorized_keys options)."""
        opts = ",".join(f'environment="{k}={v}"' for k, v in environment.items())
        key = (self.dir / "client_key.pub").read_text().strip()
        (self.dir / "authorized_keys").write_text(f"{opts} {key}\n")

    @property
    def ssh_command(self) -> str:
        """The ssh command for ``xensr migrate -s``: this key only, this
        host key only, no prompt, bounded connection time."""
        d = self.dir
        return (f"ssh -F /dev/null -i {d / 'client_key'} -o IdentitiesOnly=yes "
                f"-o UserKnownHostsFile={d / 'known_hosts'} -o StrictHostKeyChecking=yes "
                "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 "
                "-o ServerAliveCountMax=3 -l root")

    # -- running in a namespace ----------------------------------------------

    def run_in(self, ns: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(_enter(ns, argv), env=env, capture_output=True,
                              text=True, timeout=timeout)

    def run_a(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run_in(self.ns_a, argv, env, timeout)


# --------------------------------------------------------------------------
# The two-hosts demo: ./bootstrap demo-migrate runs this file with the
# demo's Python (xensr installed from the wheel):
#     python tests/support/netns.py demo [--memory MIB] [--dirty-pages N] [--helper PATH]

def demo(argv: Sequence[str]) -> int:
    import argparse
    import json
    import sys
    import tempfile

    from xensr.testing import SimulatedHost

    p = argparse.ArgumentParser(prog="netns.py demo",
                                description="live migration between two network namespaces")
    p.add_argument("--memory", type=int, default=256, help="guest memory in MiB (default 256)")
    p.add_argument("--dirty-pages", type=int, default=2048,
                   help="pages the guest dirties per precopy round (default 2048)")
    p.add_argument("--helper", help="the save/restore helper on both hosts (default xensr's)")
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        print(f"demo-migrate: {why}", file=sys.stderr)
        return 1
    bindir = os.path.dirname(sys.executable)
    xensr_cmd = os.path.join(bindir, "xensr")
    with tempfile.TemporaryDirectory(prefix="xensr-demo-migrate-") as tmp:
        src = SimulatedHost(Path(tmp) / "host-a")
        dst = SimulatedHost(Path(tmp) / "host-b")
        src.record_destroyed = True
        dom = src.create_domain(args.memory, vcpus=2, name="guest",
                                dirty_pages=args.dirty_pages)
        env_b = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
                 "XENSR_SIMHOST_DIR": str(dst.state_dir)}
        env_a = dict(os.environ, XENSR_SIMHOST_DIR=str(src.state_dir))
        if args.helper:
            env_a["XENSR_SAVE_HELPER"] = env_b["XENSR_SAVE_HELPER"] = args.helper
        with TwoHosts(Path(tmp) / "net") as net:
            net.start_sshd(env_b)
            print(f"host A: namespace {net.ns_a}, {net.addr_a}, simulated host {src.state_dir}")
            print(f"host B: namespace {net.ns_b}, {net.addr_b}, sshd, simulated host {dst.state_dir}")
            print(f"guest: domain {dom} on host A, {args.memory} MiB, dirtying "
                  f"{args.dirty_pages} pages per round")
            cmd = [xensr_cmd, "migrate", "--json", "-s", net.ssh_command,
                   "--remote-program", "xensr", "guest", net.addr_b]
            print(f"$ nsenter --net={_NETNS_DIR}/{net.ns_a}", *cmd[:4], "'ssh -i KEY ...'",
                  *cmd[5:])
            r = net.run_a(cmd, env=env_a, timeout=600)
        sys.stderr.write(r.stderr)
        if r.returncode != 0:
            print(f"demo-migrate: xensr migrate failed (exit {r.returncode})", file=sys.stderr)
            return 1
        doc = json.loads(r.stdout)
        for rnd in doc["rounds"]:
            print(f"  {rnd['name']:<22} {rnd['pages']:>8} pages {rnd['bytes']:>12} bytes"
                  f"{'' if rnd['live'] else '  (guest suspended)'}")
        gone = src.destroyed()[-1]
        new = dst.lookup("guest")
        same = dst.memory_digest(new) == gone["memory"]
        state = dst.domain_state(new)["state"]
        print(f"total {doc['total_seconds']:.3f} s, guest suspended {doc['suspended_seconds']:.3f} s")
        print(f"host A: domains {src.domain_ids()} (the source is gone)")
        print(f"host B: domain {new} 'guest' {state}; memory identical to the source's: "
              f"{'yes' if same else 'NO'}")
        src.close()
        dst.close()
        return 0 if same and state == "running" and not src.domain_ids() else 1


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["demo"]:
        print("usage: netns.py demo [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(demo(sys.argv[2:]))
