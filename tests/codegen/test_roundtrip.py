"""Generated senders (C) against generated decoders (Cython), both ways.

Every message of the table is sent by the C stubs compiled into a small
driver program generated from the same model, read back by the Cython
decoders, and compared field by field; replies travel the other way.
"""

import os
import random
import struct
import subprocess

import pytest

from codegen.model import Direction, Kind
from codegen.table import TABLE
from tests.support.fixtures import DEBIAN_BIN
from xensr import _constants as C
from xensr import _xc
from xensr.errors import (
    EmptyStringError,
    ProtocolError,
    ShortFrameError,
    TrailingBytesError,
    UnknownMessageError,
    UnterminatedStringError,
    WrongDirectionError,
)

from . import driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    with open(os.path.join(ROOT, "helper_c", "xensr_msgs.c")) as f:
        checked_in = f.read()
    return driver.build(TABLE, str(tmp_path_factory.mktemp("drv")), checked_in)


def run_driver(exe, tmp_path, commands, replies=()):
    script = tmp_path / "commands"
    script.write_text("".join(" ".join(c) + "\n" for c in commands))
    stdin = b"".join(struct.pack("=i", r) for r in replies)
    r = subprocess.run([exe, str(script)], input=stdin, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout, r.stderr.decode().splitlines()


def split_frames(data):
    frames, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from("=H", data, off)
        body = data[off + 2: off + 2 + n]
        assert len(body) == n, "driver wrote a short frame"
        frames.append(body)
        off += 2 + n
    return frames


def direction_of(msg):
    return Direction.SAVE if msg.save else Direction.RESTORE


def encode_arg(arg, value):
    if arg.type.kind is Kind.STRING:
        return value.encode().hex() or "-"
    return str(value)


def edge_values(t):
    return [t.minimum, t.maximum, 0, -1 if t.signed else 1]


def random_string(rng, n):
    alphabet = "abcdefghijklmnopqrstuvwxyz ABC:/_-0123456789é"
    return "".join(rng.choice(alphabet) for _ in range(n))


def cases(seed=1234, per_message=40):
    rng = random.Random(seed)
    out = []
    for msg in TABLE:
        for i in range(per_message):
            values = []
            for arg in msg.args:
                t = arg.type
                if t.kind is Kind.STRING:
                    n = rng.choice([0, 0, 1, 5, 60, 300, 4000])
                    values.append(random_string(rng, n))
                elif i < 4:
                    values.append(edge_values(t)[i])
                else:
                    values.append(rng.randint(t.minimum, t.maximum))
            out.append((msg, values))
    return out


def test_every_message_round_trips(drv, tmp_path):
    rng = random.Random(99)
    commands, expected, replies = [], [], []
    for msg, values in cases():
        commands.append([msg.name] + [encode_arg(a, v) for a, v in zip(msg.args, values)])
        expected.append((msg, values))
        if msg.reply.waits:
            replies.append(rng.choice([0, 1, -1, 2, 0x7FFFFFFF, -0x80000000]))
    stdout, stderr = run_driver(drv, tmp_path, commands, replies)
    frames = split_frames(stdout)
    assert len(frames) == len(expected)
    for body, (msg, values) in zip(frames, expected):
        # The frame is exactly as long as the table says.
        strings = sum(len(v.encode()) + 1 for a, v in zip(msg.args, values)
                      if a.type.kind is Kind.STRING)
        assert len(body) == msg.fixed_size + strings
        msgtype, args = _xc.decode_frame_body(body, direction_of(msg))
        assert msgtype == msg.number
        got = list(args)
        for arg, value, g in zip(msg.args, values, got):
            if arg.type.kind is Kind.INTEGER and not arg.type.signed:
                value &= (1 << (8 * arg.type.size)) - 1
            assert g == value, (msg.name, arg.name)
    # Replies come back in order, each to the message that waited for it.
    assert stderr == [
        f"reply {m.name} {r}"
        for (m, _), r in zip([e for e in expected if e[0].reply.waits], replies)
    ]


@pytest.mark.parametrize("msg", [m for m in TABLE if m.string_args], ids=lambda m: m.name)
def test_strings_at_and_over_the_64k_limit(drv, tmp_path, msg):
    n_str = len(msg.string_args)
    room = C.FRAME_BODY_MAX - msg.fixed_size - n_str  # bytes for string contents
    ints = {a.name: 7 for a in msg.args if a.type.kind is Kind.INTEGER}
    exact = ["x" * (room - (n_str - 1) * 3)] + ["y" * 3] * (n_str - 1)
    over = ["a" * 10] + ["b" * 200000] * (n_str - 1)
    huge_first = ["c" * 100000] + ["d" * 100000] * (n_str - 1)
    commands = []
    for strs in (exact, over, huge_first):
        it = iter(strs)
        vals = [next(it) if a.type.kind is Kind.STRING else ints[a.name] for a in msg.args]
        commands.append([msg.name] + [encode_arg(a, v) for a, v in zip(msg.args, vals)])
    stdout, _ = run_driver(drv, tmp_path, commands)
    frames = split_frames(stdout)
    assert [len(b) for b in frames] == [C.FRAME_BODY_MAX] * 3
    decoded = [_xc.decode_frame_body(b, direction_of(msg))[1] for b in frames]
    idx = [i for i, a in enumerate(msg.args) if a.type.kind is Kind.STRING]
    # At the limit: nothing cut.
    assert [decoded[0][i] for i in idx] == exact
    # Over it: the last string is cut first, earlier ones kept whole.
    assert decoded[1][idx[0]] == "a" * 10
    assert decoded[1][idx[-1]] == "b" * len(decoded[1][idx[-1]])
    if n_str > 1:
        # The first string stays whole while the last one can give way.
        assert decoded[2][idx[0]] == "c" * 100000 or len(decoded[2][idx[0]]) < 100000
        assert decoded[2][idx[-1]] == ""


def test_b57_example_bytes(drv, tmp_path):
    """docs/protocol.md §11, captured from Debian's helper: exact bytes both ways."""
    frame1 = bytes.fromhex(
        "3200" "0100" "01000000" "00000000"
        "12000000") + b"libxl-save-helper\0" + bytes.fromhex("0e000000") + b"starting save\0"
    frame2 = (bytes.fromhex("5200" "0100" "08000000" "02000000" "08000000") + b"xencall\0"
              + bytes.fromhex("38000000")
              + b"Could not obtain handle on privileged command interface\0")
    frame3 = (bytes.fromhex("3d00" "0100" "08000000" "02000000" "12000000")
              + b"libxl-save-helper\0" + bytes.fromhex("19000000")
              + b"xc_interface_open failed\0")
    complete = bytes.fromhex("0a000a000000000000000000")
    assert _xc.decode_frame_body(frame1[2:], C.DIR_SAVE) == (
        1, (C.XTL_DEBUG, 0, "libxl-save-helper", "starting save"))
    assert _xc.decode_frame_body(frame2[2:], C.DIR_SAVE) == (
        1, (C.XTL_ERROR, 2, "xencall",
            "Could not obtain handle on privileged command interface"))
    assert _xc.decode_frame_body(frame3[2:], C.DIR_RESTORE)[1][3] == "xc_interface_open failed"
    assert _xc.decode_frame_body(complete[2:], C.DIR_SAVE) == (10, (0, 0))
    commands = [
        ["log", "1", "0", b"libxl-save-helper".hex(), b"starting save".hex()],
        ["log", "8", "2", b"xencall".hex(),
         b"Could not obtain handle on privileged command interface".hex()],
        ["log", "8", "2", b"libxl-save-helper".hex(), b"xc_interface_open failed".hex()],
        ["complete", "0", "0"],
    ]
    stdout, stderr = run_driver(drv, tmp_path, commands, [0])
    assert stdout == frame1 + frame2 + frame3 + complete
    assert stderr == ["reply complete 0"]


def body(msgtype, payload=b""):
    return struct.pack("=H", msgtype) + payload


def string(s, nul=True, length=None):
    data = s + (b"\0" if nul else b"")
    return struct.pack("=I", len(data) if length is None else length) + data


GOOD_LOG = body(1, struct.pack("=II", 5, 0) + string(b"ctx") + string(b"text"))


@pytest.mark.parametrize("data,direction,error,offset,name", [
    (b"", C.DIR_SAVE, ShortFrameError, 0, None),
    (b"\x0a", C.DIR_SAVE, ShortFrameError, 0, None),
    (body(10, b"\0\0\0\0\0\0\0"), C.DIR_SAVE, ShortFrameError, 6, "complete"),
    (body(10, b"\0" * 9), C.DIR_SAVE, TrailingBytesError, 10, "complete"),
    (body(3, b"\0"), C.DIR_SAVE, TrailingBytesError, 2, "suspend"),
    (GOOD_LOG + b"\0", C.DIR_RESTORE, TrailingBytesError, len(GOOD_LOG), "log"),
    (GOOD_LOG[:-1], C.DIR_SAVE, ShortFrameError, 22, "log"),
    (GOOD_LOG[:12], C.DIR_SAVE, ShortFrameError, 10, "log"),
    (body(0), C.DIR_SAVE, UnknownMessageError, 0, None),
    (body(12), C.DIR_SAVE, UnknownMessageError, 0, None),
    (body(0xFFFF), C.DIR_RESTORE, UnknownMessageError, 0, None),
    (body(8, b"\0" * 4), C.DIR_SAVE, WrongDirectionError, 0, "static_data_done"),
    (body(9, b"\0" * 16), C.DIR_SAVE, WrongDirectionError, 0, "restore_results"),
    (body(7, b"\0" * 8), C.DIR_RESTORE, WrongDirectionError, 0, "switch_qemu_logdirty"),
    (body(11, b"\0" * 20), C.DIR_RESTORE, WrongDirectionError, 0, "precopy_policy"),
    (body(1, struct.pack("=II", 1, 0) + string(b"", nul=False) + string(b"t")),
     C.DIR_SAVE, EmptyStringError, 10, "log"),
    (body(1, struct.pack("=II", 1, 0) + string(b"c") + string(b"text", nul=False)),
     C.DIR_SAVE, UnterminatedStringError, 23, "log"),
    (body(2, string(b"c", length=0xFFFFFFFF)), C.DIR_SAVE, ShortFrameError, 6, "progress"),
    (body(2, string(b"c") + string(b"d") + b"\0" * 15), C.DIR_SAVE, ShortFrameError, 22,
     "progress"),
])
def test_malformed_frames_each_get_their_error(data, direction, error, offset, name):
    with pytest.raises(error) as info:
        _xc.decode_frame_body(data, direction)
    exc = info.value
    assert isinstance(exc, ProtocolError)
    assert exc.offset == offset
    assert exc.msgname == name
    if name:
        assert name in str(exc)
    assert f"offset {offset}" in str(exc) or offset == 0


def test_fuzzed_bodies_raise_only_protocol_errors():
    rng = random.Random(5)
    seeds = [GOOD_LOG, body(10, b"\0" * 8), body(9, b"\1" * 16), body(11, b"\2" * 20),
             body(2, string(b"a") + string(b"bb") + b"\0" * 16)]
    for _ in range(20000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randint(0, 2)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and data:
                del data[rng.randrange(len(data)):]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        for direction in (C.DIR_SAVE, C.DIR_RESTORE):
            try:
                _xc.decode_frame_body(bytes(data), direction)
            except ProtocolError:
                pass


def test_reply_encoding():
    assert _xc.encode_reply(0) == b"\0\0\0\0"
    assert _xc.encode_reply(-1) == b"\xff\xff\xff\xff"
    assert _xc.encode_reply(0x7FFFFFFF) == struct.pack("=i", 0x7FFFFFFF)
    for bad in (0x80000000, -0x80000001):
        with pytest.raises(OverflowError):
            _xc.encode_reply(bad)


def test_reply_kinds_follow_the_table():
    kinds = {"none": 0, "W": 1, "A": 2}
    for m in C.MESSAGES:
        assert _xc.reply_kind(m.number) == kinds[m.reply]
    assert _xc.reply_kind(0) == 0 and _xc.reply_kind(99) == 0


def test_compute_cbflags():
    class Save:
        def suspend(self):
            return True

        def switch_qemu_logdirty(self, domid, enable):
            pass

        progress = None  # not callable, and not a libxc callback anyway

    class Restore:
        def static_data_done(self, missing):
            return 0

        def restore_results(self, store, console):
            pass

        def switch_qemu_logdirty(self, domid, enable):  # save-only: ignored
            pass

    class Policy(Save):
        def precopy_policy(self, stats):
            return 0

    assert _xc.compute_cbflags(Save(), C.DIR_SAVE) == 136
    assert _xc.compute_cbflags(Restore(), C.DIR_RESTORE) == 768
    assert _xc.compute_cbflags(Policy(), C.DIR_SAVE) == 136 | C.CBFLAG_PRECOPY_POLICY
    assert _xc.compute_cbflags(None, C.DIR_SAVE) == 0
    assert _xc.compute_cbflags(object(), C.DIR_RESTORE) == 0


def test_constants_module_matches_table():
    assert C.TABLE_DIGEST == TABLE.digest == _xc.TABLE_DIGEST
    for m in TABLE:
        assert getattr(C, f"MSG_{m.name.upper()}") == m.number
        assert C.MESSAGES_BY_NAME[m.name].reply == m.reply.value
    assert C.XTL_ERROR == 8 and C.XGS_POLICY_ABORT == -1 and C.XGR_CHECKPOINT_FAILOVER == 2


DEBIAN_HELPER = str(DEBIAN_BIN / "libxl-save-helper")   # of the Xen built for


@pytest.mark.skipif(not os.path.exists(DEBIAN_HELPER),
                    reason="Debian's xen-utils is not unpacked (run ./bootstrap deps)")
@pytest.mark.parametrize("mode,args", [
    ("--save-domain", ["5", "-1", "7", "1", "136", "0"]),
    ("--restore-domain", ["5", "-1", "7", "1", "0", "2", "0", "768", "0"]),
])
def test_debian_helper_frames_match_generated_senders(drv, tmp_path, mode, args):
    """Debian's own helper, on this host with no Xen (real libxenctrl), writes
    frames that our decoders read and our senders reproduce byte for byte."""
    r = subprocess.run([DEBIAN_HELPER, mode, *args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30, pass_fds=(),
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 255
    direction = C.DIR_SAVE if mode == "--save-domain" else C.DIR_RESTORE
    frames = split_frames(r.stdout)
    decoded = [_xc.decode_frame_body(b, direction) for b in frames]
    assert [d[0] for d in decoded] == [C.MSG_LOG] * 3
    assert decoded[0][1] == (C.XTL_DEBUG, 0, "libxl-save-helper",
                             "starting save" if direction == C.DIR_SAVE else "starting restore")
    assert decoded[-1][1][0] == C.XTL_ERROR
    assert decoded[-1][1][3] == "xc_interface_open failed"
    commands = [["log", str(lvl), str(err), ctx.encode().hex() or "-", txt.encode().hex() or "-"]
                for _, (lvl, err, ctx, txt) in decoded]
    ours, _ = run_driver(drv, tmp_path, commands)
    assert ours == r.stdout
