"""Hostile but valid input, and files that are not regular files: every
problem is a typed error with an offset, nothing is left behind."""

from __future__ import annotations

import json
import os

import pytest

from tests.stream.gen import make
from xensr import stream, xlfile
from xensr.cli import main
from xensr.errors import StreamFormatError

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
