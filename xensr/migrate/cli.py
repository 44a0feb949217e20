"""``xensr migrate`` and ``xensr migrate-receive``: xl's commands, xl's bytes.

Both act on the simulated host whose state directory is
``$XENSR_SIMHOST_DIR`` when that is set, on the real Xen host otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional

from ..errors import ToolstackError, XensrError
from ..policy import add_precopy_arguments, policy_from_args
from . import wire as W

if TYPE_CHECKING:
    from ..policy import Round

_PROG = "xensr"


def _host() -> Any:
    from ..toolstack import local_host

    return local_host()


def _helper_kw(host: Any, args: argparse.Namespace) -> Dict[str, Any]:
    """The helper and its environment: a simulated host's libraries."""
    kw: Dict[str, Any] = {}
    if getattr(args, "helper", None):
        kw["helper"] = args.helper
    env = getattr(host, "env", None)
    if isinstance(env, dict):
        kw["env"] = env
    return kw


def _sigterm_as_interrupt() -> Any:
    """SIGTERM stops the command as Ctrl-C does (the helper unwinds, the
    source is put back, a half-made copy destroyed)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, handler)


def _logging(args: argparse.Namespace) -> None:
    """Messages on stderr: warnings, more with each -v (xl's global
    option), with timestamps under -T."""
    import logging

    verbose = getattr(args, "verbose", 0) or 0
    level = max(logging.DEBUG, logging.WARNING - 10 * verbose)
    fmt = "%(asctime)s " if getattr(args, "timestamps", False) else ""
    logging.basicConfig(stream=sys.stderr, level=level, format=fmt + f"{_PROG}: %(message)s")


def _say(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# migrate


class _Migrate:
    HELP = "live-migrate a domain to another host, as xl migrate does"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("-s", dest="ssh_command", metavar="SSHCMD", default="ssh",
                       help="command that reaches HOST (default: ssh); with '' HOST is the "
                            "whole command that starts the receiver")
        p.add_argument("-C", dest="config", metavar="CONFIG",
                       help="send this libxl JSON configuration instead of the domain's")
        p.add_argument("-e", dest="no_daemon", action="store_true",
                       help="the receiver does not daemonize or monitor the domain (passes -e)")
        p.add_argument("-F", dest="foreground", action="store_true",
                       help="as -e (xl's sender passes -e for it)")
        p.add_argument("-p", dest="paused", action="store_true",
                       help="leave the domain paused on the receiver (passes -p)")
        p.add_argument("-D", dest="preserve_domid", action="store_true",
                       help="ask the receiver for the same domid")
        p.add_argument("--debug", action="store_true",
                       help="send every page again in a VERIFY pass for the receiver to "
                            "check (passes -d)")
        p.add_argument("--live", action="store_true",
                       help="ignored: migration is always live")
        p.add_argument("--remote-program", metavar="PROGRAM", default="xl",
                       help="the receiver program run on HOST: xl (default) or xensr")
        p.add_argument("--helper", metavar="PATH",
                       help="the save helper to run (default: xensr's)")
        p.add_argument("--json", action="store_true",
                       help="print a JSON summary: rounds, pages and bytes per round, the "
                            "policy's decisions, pages sent after the suspend, total and "
                            "suspended time")
        p.add_argument("domain", metavar="DOMAIN", help="the domain's name or domid")
        p.add_argument("host", metavar="HOST",
                       help="the host to migrate to (with -s '', the receiver's command)")
        add_precopy_arguments(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from .sender import MigrationSender, config_object
        from .transport import CommandTransport

        _logging(args)
        host = _host()
        domid = _domid(host, args.domain)
        config = None
        if args.config:
            with open(args.config, "rb") as f:
                try:
                    config = config_object(f.read())
                except ValueError as e:
                    raise XensrError(f"{args.config}: not a libxl JSON configuration: {e}") from e
        tty = sys.stderr.isatty()
        progress = _Progress() if tty else None
        old = _sigterm_as_interrupt()
        transport = CommandTransport.ssh(
            args.host, ssh_command=args.ssh_command, program=args.remote_program,
            no_daemon=args.no_daemon or args.foreground, debug=args.debug, paused=args.paused,
            verbose=getattr(args, "verbose", 0) or 0,
            progress_cr=bool(getattr(args, "progress_cr", False)) or tty,
            timestamps=bool(getattr(args, "timestamps", False)))
        try:
            ex = MigrationSender(host, domid, transport.send_fd, transport.recv_fd,
                                 config=config, debug=args.debug,
                                 preserve_domid=args.preserve_domid, progress=progress,
                                 policy=policy_from_args(args), **_helper_kw(host, args))
            try:
                result = ex.run()
            except KeyboardInterrupt:
                _say("migrate: interrupted; the source domain was put back")
                return 130
            finally:
                if progress is not None:
                    progress.end()
        except W.MigrationError as e:
            _say(f"migrate: {e}")
            if isinstance(e, W.HandshakeUndefined):
                _say("migrate: migration failed during the final handshake: domain state is "
                     "now undefined, check at both ends")
            return 1
        finally:
            rc = transport.close()
            signal.signal(signal.SIGTERM, old)
        if rc:
            _say(f"migrate: the transport command exited with status {rc}")
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            _say(f"migrate: domain {domid} ({result.name}) migrated in {result.elapsed:.3f} s, "
                 f"suspended {result.suspended:.3f} s, {len(result.rounds)} rounds")
            last = result.save.precopy.decisions[-1:]
            if last:
                _say(f"migrate: the precopy policy stopped: {last[0].reason}")
        return 0


def _domid(host: Any, text: str) -> int:
    if text.isdigit():
        return int(text)
    return int(host.lookup(text))


class _Progress:
    """One line per pass over memory on the terminal, redrawn in place."""

    def __init__(self) -> None:
        self.last: Optional[str] = None

    def __call__(self, rnd: Round, done: int) -> None:
        width = 30
        total = rnd.pages
        frac = min(1.0, done / total) if total else 1.0
        bar = "#" * int(frac * width)
        label = rnd.name or f"round {rnd.number}"
        if self.last is not None and self.last != label:
            sys.stderr.write("\n")
        self.last = label
        sys.stderr.write(f"\r{label:<22} [{bar:<{width}}] {done}/{total} pages")
        sys.stderr.flush()

    def end(self) -> None:
        if self.last is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


MIGRATE = _Migrate()


# --------------------------------------------------------------------------
# migrate-receive


class _MigrateReceive:
    HELP = ("receive a migration on standard input and output, as xl migrate-receive "
            "does (run by the sender)")

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("-e", dest="no_daemon", action="store_true",
                       help="do not daemonize or monitor the domain (xensr never does)")
        p.add_argument("-F", dest="foreground", action="store_true",
                       help="accepted for xl compatibility (xensr never daemonizes)")
        p.add_argument("-d", dest="debug", action="store_true",
                       help="print the received configuration on standard error")
        p.add_argument("-p", dest="paused", action="store_true",
                       help="leave the domain paused after the migration")
        p.add_argument("--to-file", metavar="FILE",
                       help="receive into an xl save file instead of a domain (no hypervisor "
                            "needed); xl restore reads it")
        p.add_argument("--helper", metavar="PATH",
                       help="the restore helper to run (default: xensr's)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from .receiver import receive_domain, receive_to_file

        _logging(args)
        # The protocol owns the original stdout; anything printed goes to
        # stderr, which ssh carries back to the sender's terminal.
        out = os.dup(1)
        os.set_inheritable(out, False)
        os.dup2(2, 1)
        inp = 0
        old = _sigterm_as_interrupt()
        log = (lambda text: _say(f"migrate-receive: configuration received:\n{text}")) \
            if args.debug else None
        try:
            if args.to_file:
                r = receive_to_file(args.to_file, out, inp, debug=args.debug, log=log)
                _say(f"migrate-receive: {r.name} received into {args.to_file} "
                     f"({r.file_bytes} bytes)")
                return 0
            host = _host()
            from ..toolstack import HostUnavailable, IncomingToolstack

            if not isinstance(host, IncomingToolstack):
                raise HostUnavailable(
                    "this host cannot create the incoming domain (xensr receives into a "
                    "domain only on the simulated host): use --to-file, or xl migrate-receive")
            r2 = receive_domain(host, out, inp, paused=args.paused, debug=args.debug, log=log,
                                **_helper_kw(host, args))
            started = (" (paused)" if r2.paused else
                       f" (unpaused {r2.unpause_seconds:.3f} s after the end of the stream)"
                       if r2.unpause_seconds is not None else "")
            _say(f"migrate-receive: {r2.name} is domain {r2.domid}{started}")
            return 0
        except KeyboardInterrupt:
            _say("migrate-receive: interrupted; the incoming domain was destroyed")
            return 130
        except W.MigrationError as e:
            _say(f"migrate-receive: {e}")
            return 1
        except ToolstackError as e:
            _say(f"migrate-receive: {e}")
            return 1
        finally:
            signal.signal(signal.SIGTERM, old)
            os.close(out)


MIGRATE_RECEIVE = _MigrateReceive()
