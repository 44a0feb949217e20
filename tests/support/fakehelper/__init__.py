"""The fake helper (fakehelper.c) and a frame encoder written independently
of the generated code, for the callout and API tests."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fakehelper.c"


def build(outdir: Path) -> Path:
    """Compile fakehelper.c into outdir; return the executable's path."""
    cc = shutil.which(os.environ.get("CC", "cc")) or "cc"
    out = Path(outdir) / "fakehelper"
    subprocess.run([cc, "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror",
                    str(SOURCE), "-o", str(out)], check=True)
    return out


# ----------------------------------------------------------------------
# Frames (docs/protocol.md §4), packed by hand.

def frame(body: bytes) -> bytes:
    return struct.pack("=H", len(body)) + body


def string(text: bytes) -> bytes:
    data = text + b"\0"
    return struct.pack("=I", len(data)) + data


def log(level: int, errnoval: int, context: bytes, text: bytes) -> bytes:
    return frame(struct.pack("=HII", 1, level, errnoval & 0xFFFFFFFF)
                 + string(context) + string(text))


def progress(context: bytes, what: bytes, done: int, total: int) -> bytes:
    return frame(struct.pack("=H", 2) + string(context) + string(what)
                 + struct.pack("=QQ", done, total))


def bare(msgtype: int) -> bytes:
    """suspend 3, postcopy 4, checkpoint 5, wait_checkpoint 6."""
    return frame(struct.pack("=H", msgtype))


SUSPEND = bare(3)
POSTCOPY = bare(4)
CHECKPOINT = bare(5)
WAIT_CHECKPOINT = bare(6)


def logdirty(domid: int, enable: int) -> bytes:
    return frame(struct.pack("=HII", 7, domid, enable))


def static_data_done(missing: int) -> bytes:
    return frame(struct.pack("=HI", 8, missing))


def restore_results(store: int, console: int) -> bytes:
    return frame(struct.pack("=HQQ", 9, store, console))


def complete(retval: int, errnoval: int) -> bytes:
    return frame(struct.pack("=Hii", 10, retval, errnoval))


def precopy(iteration: int, written: int, dirty: int) -> bytes:
    return frame(struct.pack("=HIQq", 11, iteration, written, dirty))


# ----------------------------------------------------------------------
# Scripts

class Script:
    """Commands for fakehelper.c (see its header)."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def write(self, data: bytes) -> "Script":
        self.lines.append("w " + data.hex())
        return self

    def write_io(self, data: bytes) -> "Script":
        """Write to the io fd (the stream)."""
        self.lines.append("o " + data.hex())
        return self

    def sync(self) -> "Script":
        self.lines.append("s")
        return self

    def reply(self) -> "Script":
        self.lines.append("r")
        return self

    def report(self) -> "Script":
        self.lines.append("f")
        return self

    def ignore_term(self) -> "Script":
        self.lines.append("i")
        return self

    def catch_term(self) -> "Script":
        self.lines.append("t")
        return self

    def wait_term(self) -> "Script":
        self.lines.append("T")
        return self

    def hang(self) -> "Script":
        self.lines.append("h")
        return self

    def sleep(self, ms: int) -> "Script":
        self.lines.append(f"z {ms}")
        return self

    def close_stdout(self) -> "Script":
        self.lines.append("c")
        return self

    def die(self, sig: int) -> "Script":
        self.lines.append(f"k {int(sig)}")
        return self

    def exit(self, code: int) -> "Script":
        self.lines.append(f"x {code}")
        return self

    def request(self, data: bytes) -> "Script":
        """Write a request frame and wait for its reply."""
        return self.write(data).reply()

    def save_ok(self) -> "Script":
        return self.request(complete(0, 0))


class Fake:
    """A compiled fake helper plus a scratch directory for scripts."""

    def __init__(self, path: Path, workdir: Path):
        self.path = path
        self.workdir = Path(workdir)
        self.n = 0

    def env(self, script: Script, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        self.n += 1
        spath = self.workdir / f"script{self.n}"
        rpath = self.workdir / f"report{self.n}"
        spath.write_text("\n".join(script.lines) + "\n")
        env = dict(os.environ if base is None else base)
        env["FAKEHELPER_SCRIPT"] = str(spath)
        env["FAKEHELPER_REPORT"] = str(rpath)
        self.last_report = rpath
        return env

    def report(self) -> "Report":
        return Report(self.last_report)


class Report:
    def __init__(self, path: Path):
        text = path.read_text() if path.exists() else ""
        self.replies: List[int] = []
        self.argv: List[str] = []
        self.fds: Dict[int, str] = {}
        self.ionb: Optional[int] = None
        self.sigign = 0
        self.sigblk = 0
        for line in text.splitlines():
            key, _, rest = line.partition(" ")
            if key == "reply":
                self.replies.append(int(rest))
            elif key == "argv":
                self.argv.append(rest.partition(" ")[2])
            elif key == "fd":
                n, _, target = rest.partition(" ")
                self.fds[int(n)] = target
            elif key == "ionb":
                self.ionb = int(rest)
            elif key == "SigIgn:":
                self.sigign = int(rest.strip(), 16)
            elif key == "SigBlk:":
                self.sigblk = int(rest.strip(), 16)

    def ignored(self, sig: int) -> bool:
        return bool(self.sigign & (1 << (sig - 1)))


SIGKILLED = -signal.SIGKILL
SIGTERMED = -signal.SIGTERM


def open_fds() -> List[int]:
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


def children() -> List[int]:
    """Pids whose parent is this process (zombies included)."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == me:
            out.append(int(name))
    return out
