"""Fuzz target: xensr-save-helper's command line and its reply reader.

An input is a command line and the bytes the helper reads from stdin (its
replies), see :func:`encode_input`.  Each input runs the built helper as a
subprocess: against the simulated host (a fresh copy of a template state
directory holding a running guest, domid 1, and an empty restore target,
domid 2) or, with flag bit 0 clear, against no host at all (the system's
libraries, which find no hypervisor).  File descriptor 100 is a memfd: empty
for a save, a stream the simulated host saved for a restore.  Stdin ends
after the given bytes.

The helper must end by itself within a bound (``HANG_SECONDS``), never on
a signal, with an exit status that docs/protocol.md §7.2 lists for xensr's
helper (0, 64, 254, 255), and with nothing on stdout when it exits for a
bad command line (64).

The helper is not instrumented, so the fuzzer is guided by what it can
see of the outcome instead of code coverage: ``_observe`` branches on the
exit status, each frame type the helper sent, and which complaint stderr
opened with, so an input that leads somewhere new is kept.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import atheris

from fuzz.targets import Finding, run

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import xensr  # noqa: E402
from xensr.testing import SimulatedHost  # noqa: E402

#: The exit statuses docs/protocol.md §7.2 gives xensr's helper.
STATUSES = frozenset({0, 64, 254, 255})
EX_USAGE = 64
#: A run taking longer than this is a hang (a normal one takes milliseconds).
HANG_SECONDS = 20.0
#: The io fd's number in the helper (high, so that it is free here too).
IO_FD = 100
MAX_ARGS = 15


def encode_input(flags: int, argv: Sequence[str], stdin: bytes) -> bytes:
    """flags byte, argument count, NUL-terminated arguments, then stdin."""
    args = list(argv)[:MAX_ARGS]
    return (bytes([flags & 0xFF, len(args)])
            + b"".join(a.encode() + b"\0" for a in args) + stdin)


def decode_input(data: bytes) -> Tuple[int, List[bytes], bytes]:
    if len(data) < 2:
        data = data.ljust(2, b"\0")
    flags, count = data[0], data[1] % (MAX_ARGS + 1)
    args: List[bytes] = []
    pos = 2
    for _ in range(count):
        end = data.find(b"\0", pos)
        if end < 0:
            end = len(data)
        args.append(data[pos:end])
        pos = end + 1
    return flags, args, data[pos:]


class _Template:
    """A simulated host state directory to copy for each run, and a stream
    of its guest to restore from."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="xensr-fuzz-helper-"))
        atexit.register(shutil.rmtree, self.dir, True)
        self.helper = xensr.helper_path()
        template = self.dir / "template"
        with SimulatedHost(template, auto_suspend=True) as host:
            assert host.create_domain(1, dirty_pages=4) == 1
            assert host.create_empty_domain() == 2
            self.lib_env = host.env
        self.stream = self._save_stream()
        self.bare_env = {k: v for k, v in os.environ.items()
                         if not k.startswith("XENSR_SIMHOST")}

    def _save_stream(self) -> bytes:
        """The guest saved once by the reference parent (which answers
        every request as libxl does)."""
        from tests.support.simhost import assert_completed, save_to_file

        state = self.fresh_state()
        try:
            env = self.env_for(state, True)
            t, data = save_to_file(Path(self.helper), None, 1, self.dir / "saved", env=env)
            assert_completed(t)
            return data
        finally:
            shutil.rmtree(state, True)

    def fresh_state(self) -> Path:
        state = Path(tempfile.mkdtemp(dir=self.dir))
        shutil.copytree(self.dir / "template", state, dirs_exist_ok=True)
        return state

    def env_for(self, state: Path, simulated: bool) -> Dict[str, str]:
        if not simulated:
            return self.bare_env
        env = dict(self.lib_env)
        env["XENSR_SIMHOST_DIR"] = str(state)
        return env

    def _run(self, args: List[bytes], stdin: bytes, env: Dict[str, str],
             io_data: bytes) -> Tuple[int, bytes, bytes]:
        """(returncode, stdout, stderr)."""
        io = os.memfd_create("xensr-fuzz-io")
        try:
            os.write(io, io_data)
            os.lseek(io, 0, os.SEEK_SET)
            os.dup2(io, IO_FD, inheritable=True)
            try:
                proc = subprocess.run([self.helper.encode(), *args], input=stdin,
                                      capture_output=True, env=env, pass_fds=(IO_FD,),
                                      timeout=HANG_SECONDS)
            except subprocess.TimeoutExpired:
                raise Finding(f"helper hung (over {HANG_SECONDS:.0f} s)",
                              f"argv {args!r}, stdin {stdin[:64]!r}") from None
            finally:
                os.close(IO_FD)
        finally:
            os.close(io)
        return proc.returncode, proc.stdout, proc.stderr


_template: Optional[_Template] = None


def _frame_types(stdout: bytes) -> List[int]:
    types = []
    pos = 0
    while pos + 4 <= len(stdout):
        length, mtype = struct.unpack_from("=HH", stdout, pos)
        types.append(mtype)
        pos += 2 + length
    return types


def _observe(status: int, types: List[int], stderr: bytes) -> None:
    """Branches for the fuzzer to see outcomes by (see the module's doc)."""
    if status == 0:
        pass
    elif status == 64:
        if b"no mode" in stderr:
            pass
        elif b"unknown mode" in stderr:
            pass
        elif b"arguments, not" in stderr:
            pass
        elif b"file descriptor" in stderr:
            pass
        elif b"65535" in stderr:
            pass
        elif b"COLO" in stderr:
            pass
        else:
            pass
    elif status == 254:
        pass
    else:
        pass
    for t in types[:64]:
        if t == 1:
            pass
        elif t == 2:
            pass
        elif t == 3:
            pass
        elif t == 4:
            pass
        elif t == 5:
            pass
        elif t == 6:
            pass
        elif t == 7:
            pass
        elif t == 8:
            pass
        elif t == 9:
            pass
        elif t == 10:
            pass
        elif t == 11:
            pass
        else:
            pass


_observe = atheris.instrument_func(_observe)


def _where(stderr: bytes) -> str:
    """The assertion or message the helper died with (its first line)."""
    line = stderr.strip().split(b"\n")[0] if stderr.strip() else b""
    return re.sub(rb"^[^:]*: ", b"", line)[:120].decode(errors="replace")


def check_outcome(args: List[bytes], stdin: bytes, status: int, out: bytes, err: bytes) -> None:
    """What docs/protocol.md §7.2 promises of any run of xensr's helper."""
    detail = f"argv {args!r}, stdin {stdin[:64]!r}, stderr {err[-300:]!r}"
    if status < 0:
        raise Finding(f"helper killed by signal {-status}: {_where(err)}", detail)
    if status not in STATUSES:
        raise Finding(f"helper exit status {status} undocumented", detail)
    if status == EX_USAGE and out:
        raise Finding("helper wrote to stdout before a usage error", detail)


def test_one_input(data: bytes) -> None:
    global _template
    if _template is None:
        _template = _Template()
    tpl = _template
    flags, args, stdin = decode_input(data)
    simulated = bool(flags & 1)
    state = tpl.fresh_state() if simulated else tpl.dir
    try:
        restore = bool(args) and args[0] == b"--restore-domain"
        status, out, err = tpl._run(args, stdin, tpl.env_for(state, simulated),
                                       tpl.stream if restore else b"")
    finally:
        if simulated:
            shutil.rmtree(state, True)
    check_outcome(args, stdin, status, out, err)
    _observe(status, _frame_types(out), err[:200])


def main(argv: Optional[List[str]] = None) -> None:
    run(test_one_input, argv)


if __name__ == "__main__":
    main()
