"""``xensr demo``: a live migration to a file and back, on a simulated host.

The whole job of xensr on the embedded default: a simulated Xen host (the
simulated host shipped in the package), a guest of a few hundred MiB whose
workload dirties pages while it runs, a live save into an xl save file with
a progress bar, a restore into a new domain, a byte-for-byte check of the
guest memory, and a summary.  Exits 0 only when the memories match.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, TextIO

from ._xenlibs import XEN_VERSION
from .policy import add_precopy_arguments, policy_from_args

HELP = "save a live simulated guest to an xl save file and restore it"

#: Where Debian's xen-utils-4.X installs libxl's helper, for the Xen
#: release xensr is built for (None when xensr is not built).
DEBIAN_HELPER: Optional[str] = (f"/usr/lib/xen-{XEN_VERSION}/bin/libxl-save-helper"
                                if XEN_VERSION else None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", type=_memory, default=256, metavar="MIB",
                   help="guest memory in MiB (default 256)")
    p.add_argument("--vcpus", type=_vcpus, default=2, help="guest vCPUs (default 2)")
    p.add_argument("--kind", choices=("pv", "hvm"), default="pv",
                   help="guest type (default pv)")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=True,
                      help="live save: precopy rounds while the guest runs (default)")
    live.add_argument("--no-live", dest="live", action="store_false",
                      help="suspend first, then copy memory once")
    p.add_argument("--dirty-pages", type=_nonnegative, default=2048, metavar="N",
                   help="pages the guest dirties per precopy round (default 2048)")
    p.add_argument("--seed", type=_nonnegative, default=1, help="workload seed")
    p.add_argument("--helper", default="xensr", metavar="xensr|debian|PATH",
                   help="save/restore helper: xensr's (default), Debian's "
                        f"libxl-save-helper ({DEBIAN_HELPER}) or a path")
    p.add_argument("--keep", metavar="FILE", type=_keep_path,
                   help="write the save file here and keep it (default: a temporary file)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precopy_arguments(p)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _at_most(text: str, limit: int) -> int:
    """A positive int within what the simulated host accepts."""
    value = _positive(text)
    if value > limit:
        raise argparse.ArgumentTypeError(f"at most {limit} on the simulated host: {text}")
    return value


def _memory(text: str) -> int:
    from .testing import MAX_MEMORY_MIB

    return _at_most(text, MAX_MEMORY_MIB)


def _vcpus(text: str) -> int:
    from .testing import MAX_VCPUS

    return _at_most(text, MAX_VCPUS)


def _keep_path(text: str) -> str:
    """Where to keep the save file: its directory must exist (checked now,
    not after a minute of saving)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a directory: {text}")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"no such directory: {parent}")
    return text


def check_args(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the arguments taken together (a usage error), or None."""
    from .testing import PAGE_SIZE

    pages = args.memory * ((1 << 20) // PAGE_SIZE)
    if args.dirty_pages > pages:
        return (f"argument --dirty-pages: {args.dirty_pages} is more than the "
                f"guest's {pages} pages (--memory {args.memory})")
    return None


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _helper(choice: str) -> Optional[str]:
    if choice == "xensr":
        return None  # the packaged helper
    if choice == "debian":
        if DEBIAN_HELPER is None:
            raise LookupError("xensr is not built, so the Xen release of Debian's helper "
                              "is unknown; pass its path")
        if not os.access(DEBIAN_HELPER, os.X_OK):
            raise LookupError(f"Debian's helper is not installed at {DEBIAN_HELPER} "
                              f"(apt-get install xen-utils-{XEN_VERSION}), or pass its path")
        return DEBIAN_HELPER
    return choice


class ProgressBar:
    """libxenguest's progress reports, drawn on a terminal (or summarised)."""

    WIDTH = 30

    def __init__(self, out: TextIO, enabled: bool):
        self.out = out
        self.enabled = enabled
        self.tty = enabled and out.isatty()
        self.phase: Optional[str] = None
        self.last_percent = -1

    def __call__(self, context: str, doing_what: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if doing_what != self.phase:
            self.end()
            self.phase = doing_what
            self.last_percent = -1
        if total == 0:  # a single event ("Domain now suspended")
            self._line(f"  {doing_what}")
            self.phase = None
            return
        percent = min(100, done * 100 // total)
        if percent == self.last_percent:
            return
        self.last_percent = percent
        if self.tty:
            filled = self.WIDTH * percent // 100
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.out.write(f"\r  {doing_what:<24} [{bar}] {percent:3d}%")
            self.out.flush()
        elif percent == 100:
            self._line(f"  {doing_what}: {total} pages")

    def _line(self, text: str) -> None:
        self.end()
        self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty and self.phase is not None and self.last_percent >= 0:
            self.out.write("\n")
            self.out.flush()
        self.phase = None
        self.last_percent = -1


class DemoCallbacks:
    """What a toolstack answers during the save; here: suspend, progress.

    ``suspend_guest`` suspends the guest, as a toolstack asks a real one
    (xenstore's control/shutdown) and waits for it."""

    def __init__(self, bar: ProgressBar, log: TextIO, suspend_guest: Callable[[], None]):
        self.bar = bar
        self.log = log
        self.suspend_guest = suspend_guest

    def suspend(self) -> bool:
        self.bar.end()
        self.suspend_guest()
        return True

    def switch_qemu_logdirty(self, domid: int, enable: bool) -> None:
        return None  # no device model on the simulated host

    def progress(self, context: str, doing_what: str, done: int, total: int) -> None:
        self.bar(context, doing_what, done, total)


@dataclass
class _Outcome:
    """What the demo measured on the simulated host, for the summary."""

    src: int
    dst: int
    source_state: Dict[str, Any]       # before the save
    saved_state: Dict[str, Any]        # after it
    restored_state: Dict[str, Any]
    saved: Any                         # SaveResult (or what xlfile returns)
    restored: Any
    t_save: float
    t_restore: float
    pages_sent: int
    file_size: int
    src_digest: str
    dst_digest: str


def run(args: argparse.Namespace) -> int:
    from . import __version__

    out = sys.stdout
    say = _sayer(out, quiet=args.json)
    try:
        helper = _helper(args.helper)
    except LookupError as e:
        print(f"xensr: demo: {e}", file=sys.stderr)
        return 1
    bar = ProgressBar(sys.stderr if args.json else out, not args.no_progress)
    outcome = _migrate(args, helper, bar, say, out)
    report = _report(args, helper, outcome, __version__)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        say("summary:")
        for row in _summary_rows(report, outcome, args.memory):
            say(row)
    return 0 if report["memory_identical"] else 1


def _sayer(out: TextIO, quiet: bool) -> Callable[[str], None]:
    """Prints a line of the running commentary (nothing with --json)."""
    def say(text: str) -> None:
        if not quiet:
            print(text, file=out, flush=True)
    return say


def _migrate(args: argparse.Namespace, helper: Optional[str], bar: ProgressBar,
             say: Callable[[str], None], out: TextIO) -> _Outcome:
    """Create the guest, save it live to a file, restore it into a new domain."""
    from . import __version__
    from .stream import scan_file
    from .testing import SimulatedHost
    from .xlfile import restore_domain_from_file, save_domain_to_file

    with SimulatedHost() as host, tempfile.TemporaryDirectory(prefix="xensr-demo-") as tmp:
        path = args.keep or os.path.join(tmp, "guest.save")
        say(f"xensr {__version__} demo: simulated host in {host.state_dir}")
        src = host.create_domain(args.memory, vcpus=args.vcpus, kind=args.kind,
                                 dirty_pages=args.dirty_pages, seed=args.seed)
        state = host.domain_state(src)
        say(f"guest: domain {src}, {args.kind.upper()}, {args.memory} MiB, "
            f"{args.vcpus} vCPUs, dirtying {args.dirty_pages} pages per round")
        config = {"c_info": {"type": args.kind, "name": f"demo-{src}"},
                  "b_info": {"max_vcpus": args.vcpus, "max_memkb": args.memory * 1024}}
        say(f"{'live ' if args.live else ''}save to {path} "
            f"with {'xensr-save-helper' if helper is None else helper}")
        callbacks = DemoCallbacks(bar, out, lambda: host.suspend(src))
        t0 = time.monotonic()
        saved = save_domain_to_file(src, path, callbacks, config=json.dumps(config),
                                    live=args.live, helper=helper, env=host.env,
                                    policy=policy_from_args(args))
        t_save = time.monotonic() - t0
        bar.end()
        saved_state = host.domain_state(src)
        summary = scan_file(path)
        file_size = os.path.getsize(path)

        dst = host.create_empty_domain()
        say(f"restore into new domain {dst}")
        t1 = time.monotonic()
        restored = restore_domain_from_file(dst, path, store_evtchn=1, console_evtchn=2,
                                            helper=helper, env=host.env)
        t_restore = time.monotonic() - t1
        bar.end()
        src_digest = host.memory_digest(src)
        dst_digest = host.memory_digest(dst)
        return _Outcome(src=src, dst=dst, source_state=state, saved_state=saved_state,
                        restored_state=host.domain_state(dst), saved=saved,
                        restored=restored, t_save=t_save, t_restore=t_restore,
                        pages_sent=summary.pages, file_size=file_size,
                        src_digest=src_digest, dst_digest=dst_digest)


def _report(args: argparse.Namespace, helper: Optional[str], o: _Outcome,
            version: str) -> Dict[str, Any]:
    """The summary as the JSON document ``--json`` prints."""
    result = getattr(o.restored, "result", o.restored)
    mib = args.memory
    return {
        "version": version,
        "helper": helper or "xensr-save-helper",
        "guest": {"domid": o.src, "kind": args.kind, "memory_mib": mib, "vcpus": args.vcpus,
                  "dirty_pages_per_round": args.dirty_pages},
        "live": args.live,
        "save_seconds": round(o.t_save, 3),
        "restore_seconds": round(o.t_restore, 3),
        "save_mib_per_s": round(mib / o.t_save, 1) if o.t_save else None,
        "restore_mib_per_s": round(mib / o.t_restore, 1) if o.t_restore else None,
        "precopy_rounds": _int(o.saved_state.get("save_iterations")),
        "pages_sent": o.pages_sent,
        "file_bytes": o.file_size,
        "restored_domid": o.dst,
        "store_gfn": getattr(result, "store_gfn", None),
        "console_gfn": getattr(result, "console_gfn", None),
        "source_store_gfn": o.source_state.get("store_gfn"),
        "source_console_gfn": o.source_state.get("console_gfn"),
        "save_helper_pid": o.saved.pid,
        "memory_sha256": o.src_digest,
        "restored_memory_sha256": o.dst_digest,
        "memory_identical": o.src_digest == o.dst_digest,
        "restored_state": o.restored_state.get("state"),
        "pages_after_suspend": o.saved.precopy.pages_after_suspend,
        "suspended_seconds": o.saved.precopy.suspended_time,
    }


def _summary_rows(report: Dict[str, Any], o: _Outcome, mib: int) -> List[str]:
    """The summary as text lines."""
    identical = report["memory_identical"]
    return [
        f"  save:     {o.t_save:7.2f} s  ({report['save_mib_per_s']} MiB/s of guest memory)",
        f"  restore:  {o.t_restore:7.2f} s  ({report['restore_mib_per_s']} MiB/s)",
        f"  precopy rounds: {report['precopy_rounds']}, pages sent: {report['pages_sent']} "
        f"({report['pages_sent'] / (mib * 256):.2f}x the guest), "
        f"file: {o.file_size / (1 << 20):.1f} MiB",
        f"  xenstore/console frames: {report['store_gfn']}/{report['console_gfn']} "
        f"(source {report['source_store_gfn']}/{report['source_console_gfn']})",
        f"  memory: {'IDENTICAL' if identical else 'DIFFERENT'} "
        f"(sha256 {o.src_digest[:16]}... vs {o.dst_digest[:16]}...)",
    ]


def _int(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
