"""Hostile but valid input, and files that are not regular files: every
problem is a typed error with an offset, nothing is left behind."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from tests.stream.gen import make
from xensr import stream, xlfile
from xensr.cli import main
from xensr.errors import HelperStartError, SaveRestoreError, StreamFormatError, XensrError

#: Where the configuration starts in an xl save file: the 32-byte magic,
#: four u32 fields, the u32 configuration length.
CONFIG_AT = 32 + 16 + 4

DEEP = b"[" * 100_000 + b"]" * 100_000
#: Valid JSON; Python's int() refuses more than 4300 digits.
LONG_NUMBER = b'{"c_info": {"name": "guest"}, "n": ' + b"7" * 5000 + b"}"


def hostile_file(tmp_path, text: bytes):
    p = tmp_path / "hostile.xl"
    p.write_bytes(make("xl", config=text + b"\0").data)
    return p


# Where each problem is in the configuration text.
WHERE = {"deep": 100_000 - 1, "number": LONG_NUMBER.index(b"7777")}


@pytest.fixture(params=["deep", "number"])
def hostile(request, tmp_path):
    text = DEEP if request.param == "deep" else LONG_NUMBER
    return hostile_file(tmp_path, text), text, CONFIG_AT + WHERE[request.param]


def test_scan_file_refuses_json_python_cannot_hold(hostile):
    p, _, offset = hostile
    with pytest.raises(StreamFormatError) as ei:
        stream.scan_file(str(p))
    assert ei.value.offset == offset
    assert ei.value.reason == "configuration not JSON"


def test_save_file_reader_refuses_json_python_cannot_hold(hostile):
    p, _, offset = hostile
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(StreamFormatError) as ei:
        xlfile.SaveFileReader.open(p)
    assert ei.value.offset == offset
    assert len(os.listdir("/proc/self/fd")) == fds


def test_restore_from_file_refuses_json_python_cannot_hold(hostile):
    p, _, offset = hostile
    # Refused while reading the preamble: no helper is started.
    with pytest.raises(StreamFormatError) as ei:
        xlfile.restore_domain_from_file(1, p, store_evtchn=1, console_evtchn=2,
                                        helper="/nonexistent/helper")
    assert ei.value.offset == offset


def test_save_to_file_refuses_json_python_cannot_hold(hostile, tmp_path):
    _, text, offset = hostile
    target = tmp_path / "never.xl"
    for config in (text, text.decode()):
        with pytest.raises(StreamFormatError) as ei:
            xlfile.save_domain_to_file(1, target, config=config, helper="/nonexistent/helper")
        # The offset is where the configuration would have been in the file.
        assert ei.value.offset == offset
        assert not target.exists()


def test_save_to_file_refuses_a_mapping_too_deep_to_encode(tmp_path):
    config: dict = {}
    inner = config
    for _ in range(100_000):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(ValueError, match="nested too deeply"):
        xlfile.save_domain_to_file(1, tmp_path / "never.xl", config=config,
                                   helper="/nonexistent/helper")
    assert not (tmp_path / "never.xl").exists()


def test_inspect_prints_one_line_and_exits_1(capsys, hostile):
    p, _, offset = hostile
    assert main(["inspect", str(p)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"offset {offset}: " in err
    assert main(["inspect", "--json", str(p)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["offset"] == offset


def test_brackets_and_digits_inside_strings_do_not_mislead_the_offset(tmp_path):
    text = b'{"a": "[[[[ 99999 {{{{", "b": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    p = hostile_file(tmp_path, text)
    with pytest.raises(StreamFormatError) as ei:
        stream.scan_file(str(p))
    assert ei.value.offset == CONFIG_AT + text.index(b"]") - 1


# --------------------------------------------------------------------------
# Saving to what is already at the path


def device(tmp_path, name: str, minor: int) -> str:
    """A character device of the mem driver (3 null, 7 full): made in
    ``tmp_path`` when we may (so that a bug deleting it harms nothing),
    else the system's, which we then cannot delete."""
    if os.geteuid() == 0:
        path = tmp_path / name
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        return str(path)
    return f"/dev/{name}"


def failing_save(path, **kw):
    """A save that fails after the preamble is written: its helper cannot start."""
    with pytest.raises(HelperStartError):
        xlfile.save_domain_to_file(1, path, config={"c_info": {"name": "x"}},
                                   helper="/nonexistent/helper", **kw)


def test_failed_save_leaves_a_fifo_in_place(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        failing_save(fifo)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert os.read(reader, 64).startswith(b"Xen saved domain")  # written as it is
    finally:
        os.close(reader)


def test_failed_save_leaves_a_device_in_place(tmp_path):
    null = device(tmp_path, "null", 3)
    failing_save(null)
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_failed_save_leaves_a_symlink_and_empties_what_it_points_to(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"old contents")
    link = tmp_path / "link"
    link.symlink_to(target)
    failing_save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b""  # no partial stream left behind


def test_failed_save_removes_only_a_file_it_created(tmp_path):
    created = tmp_path / "new.xl"
    failing_save(created)
    assert not created.exists()
    existing = tmp_path / "old.xl"
    existing.write_bytes(b"x" * 100)
    os.chmod(existing, 0o640)
    failing_save(existing)
    assert existing.read_bytes() == b"" and stat.S_IMODE(existing.stat().st_mode) == 0o640
    existing.write_bytes(b"x" * 100)
    failing_save(existing, keep_partial=True)
    assert existing.read_bytes().startswith(b"Xen saved domain")


def test_full_device_is_a_save_error_with_its_errno(tmp_path):
    full = device(tmp_path, "full", 7)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(SaveRestoreError) as ei:
        xlfile.save_domain_to_file(1, full, config={"c_info": {"name": "x"}},
                                   helper="/nonexistent/helper")
    assert isinstance(ei.value, XensrError)
    assert ei.value.errno == errno.ENOSPC and "No space left" in str(ei.value)
    assert isinstance(ei.value.__cause__, OSError)
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    assert len(os.listdir("/proc/self/fd")) == fds


# --------------------------------------------------------------------------
# A file object that has read ahead


def test_reader_refuses_a_file_object_that_read_ahead(tmp_path):
    p = tmp_path / "guest.xl"
    p.write_bytes(make("xl").data)
    with open(p, "rb") as f:
        assert f.read(4) == b"Xen "  # the buffer took far more from the fd
        f.seek(0)
        with pytest.raises(ValueError, match="read ahead"):
            xlfile.SaveFileReader(f)
    with open(p, "rb", buffering=0) as f:  # unbuffered: fd and object agree
        with xlfile.SaveFileReader(f) as r:
            assert r.config_json == {"c_info": {"name": "guest"}}
    with open(p, "rb") as f:  # untouched buffered object: nothing read ahead yet
        with xlfile.SaveFileReader(f) as r:
            assert r.libxc_offset == os.lseek(f.fileno(), 0, os.SEEK_CUR)


# --------------------------------------------------------------------------
# A checkpointed stream with a malformed checkpoint


def test_remus_restore_of_a_malformed_checkpoint_is_a_stream_format_error(tmp_path, simulated_host):
    import xensr

    host = simulated_host
    src = host.create_domain(4, kind="hvm", dirty_pages=16)
    p = tmp_path / "remus.xl"
    taken = []

    class Primary:
        def suspend(self):
            return True

        def postcopy(self):
            return True

        def checkpoint(self):
            taken.append(1)
            return len(taken) < 3

    xlfile.save_domain_to_file(src, p, Primary(), config={"c_info": {"name": "g"}},
                               emulator_records=[xlfile.EmulatorRecord.context(b"qemu")],
                               live=True, stream_type=xensr.XC_STREAM_REMUS,
                               helper=xensr.helper_path(), env=host.env)
    ends = [r for r in stream.scan_file(str(p)).libxl_records if r.type == 4]
    bad = ends[1].offset  # the second checkpoint's CHECKPOINT_END
    data = bytearray(p.read_bytes())
    data[bad] = 0x77  # an unknown libxl record type
    p.write_bytes(bytes(data))
    dst = host.create_empty_domain()
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(StreamFormatError) as ei:
        xlfile.restore_domain_from_file(dst, p, store_evtchn=1, console_evtchn=2,
                                        stream_type=xensr.XC_STREAM_REMUS,
                                        helper=xensr.helper_path(), env=host.env)
    assert ei.value.offset == bad
    assert len(os.listdir("/proc/self/fd")) == fds
