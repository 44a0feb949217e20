"""Fuzz target: the stream and xl-file parsers.

An input is one mode byte and the bytes of a file.  The file is put in a
memfd (a regular file, as a saved domain usually is) and read:

* mode 0: ``scan_fd`` with the format detected (what ``xensr inspect`` does);
* mode 1: ``scan_fd`` with each format forced in turn (xl, libxl, libxc);
* mode 2: ``SaveFileReader`` with the format detected, then the libxc part,
  the checkpoints and the trailer as ``restore_domain_from_file`` reads
  them (the parser standing in for the helper), and the configuration as
  JSON.

Only ``StreamFormatError`` may escape.
"""

from __future__ import annotations

import json
import os
import sys

import atheris

from fuzz.targets import run

with atheris.instrument_imports(include=["xensr"]):
    from xensr import stream as xs
    from xensr import xlfile
    from xensr.errors import StreamFormatError


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("xensr-fuzz", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _scan(fd: int, fmt: str | None) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        summary = xs.scan_fd(fd, fmt=fmt)
    except StreamFormatError:
        return
    # What `xensr inspect` prints next, in text and JSON.
    xs.format_summary(summary)
    json.dumps(summary.to_dict())


def _read_file(fd: int) -> None:
    try:
        reader = xlfile.SaveFileReader(fd, fmt=None)
    except StreamFormatError:
        return
    with reader:
        try:
            reader.config_json
            # At most a few rounds: each one consumes at least a record.
            for _ in range(64):
                how = reader.skip_libxc()
                if how == "checkpoint":
                    reader.read_checkpoint()
                    continue
                if how == "end":
                    reader.read_trailer()
                break
        except StreamFormatError:
            return


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    fd = _memfd(body)
    try:
        if mode == 0:
            _scan(fd, None)
        elif mode == 1:
            for fmt in ("xl", "libxl", "libxc"):
                _scan(fd, fmt)
        else:
            _read_file(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> None:
    run(test_one_input, argv)


if __name__ == "__main__":
    main()
