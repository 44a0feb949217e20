"""The callout's frame reader: splits, coalescing, 64 KiB frames, strict
decoding, EOF mid-frame -- fed directly and through a real pipe from the
fake helper."""

from __future__ import annotations

import errno
import struct

import pytest

import xensr
from xensr import _constants as C
from xensr import _xc
from xensr.errors import (EmptyStringError, RuntFrameError, ProtocolError,
                          ShortFrameError, TrailingBytesError,
                          TruncatedFrameError, UnexpectedCallbackError,
                          UnknownMessageError, UnterminatedStringError,
                          WrongDirectionError)
from tests.support import fakehelper as fh
from tests.support.fakehelper import Script

SAVE_FLAGS = C.CBFLAG_SUSPEND | C.CBFLAG_SWITCH_QEMU_LOGDIRTY | C.CBFLAG_PRECOPY_POLICY
RESTORE_FLAGS = C.CBFLAG_STATIC_DATA_DONE | C.CBFLAG_RESTORE_RESULTS


class Recorder:
    """A handler that records every message and answers requests."""

    def __init__(self, answers=None):
        self.calls = []
        self.answers = {"suspend": 1, "switch_qemu_logdirty": 0,
                        "static_data_done": 0, "precopy_policy": 1,
                        "complete": 0, **(answers or {})}

    def __getattr__(self, attr):
        if not attr.startswith("msg_"):
            raise AttributeError(attr)
        name = attr[4:]

        def handler(*args):
            self.calls.append((name, args))
            return self.answers.get(name)
        return handler


SAVE_STREAM = b"".join([
    fh.log(C.XTL_DEBUG, 0, b"libxl-save-helper", b"starting save"),
    fh.progress(b"xc", b"Frames", 10, 2048),
    fh.log(C.XTL_ERROR, 0xFFFFFFFF, b"xc", "ünïcode ✓".encode()),
    fh.SUSPEND,
    fh.logdirty(7, 1),
    fh.precopy(3, 1 << 40, -1),
    fh.log(C.XTL_INFO, 5, b"xc", b""),
    fh.complete(-1, errno.EIO),
])

RESTORE_STREAM = b"".join([
    fh.log(C.XTL_DEBUG, 0, b"libxl-save-helper", b"starting restore"),
    fh.static_data_done(C.XGR_SDD_MISSING_CPUID | C.XGR_SDD_MISSING_MSR),
    fh.restore_results(0x7fe, 0xFFFFFFFFFFFFFFFF),
    fh.complete(0, 0),
])

EXPECTED_SAVE = [
    ("log", (C.XTL_DEBUG, 0, "libxl-save-helper", "starting save")),
    ("progress", ("xc", "Frames", 10, 2048)),
    ("log", (C.XTL_ERROR, 0xFFFFFFFF, "xc", "ünïcode ✓")),
    ("suspend", ()),
    ("switch_qemu_logdirty", (7, 1)),
    ("precopy_policy", (3, 1 << 40, -1)),
    ("log", (C.XTL_INFO, 5, "xc", "")),
    ("complete", (-1, errno.EIO)),
]


def decode(direction, flags, chunks, eof=False):
    co = _xc.Callout(direction, flags)
    rec = Recorder()
    for chunk in chunks:
        co.feed(rec, chunk)
    if eof:
        co.feed(rec, b"", eof=True)
    return co, rec.calls


def test_whole_stream_decodes_to_the_expected_calls():
    co, calls = decode(_xc.DIR_SAVE, SAVE_FLAGS, [SAVE_STREAM])
    assert calls == EXPECTED_SAVE
    assert co.completed and co.retval == -1 and co.errnoval == errno.EIO
    assert co.frames == len(EXPECTED_SAVE)
    assert co.log_lines == 3


@pytest.mark.parametrize("direction,flags,stream", [
    (_xc.DIR_SAVE, SAVE_FLAGS, SAVE_STREAM),
    (_xc.DIR_RESTORE, RESTORE_FLAGS, RESTORE_STREAM),
], ids=["save", "restore"])
def test_split_at_every_byte_boundary_decodes_the_same(direction, flags, stream):
    _, whole = decode(direction, flags, [stream])
    assert len(whole) >= 4
    for i in range(1, len(stream)):
        _, calls = decode(direction, flags, [stream[:i], stream[i:]])
        assert calls == whole, f"split at byte {i}"
    _, calls = decode(direction, flags, [bytes([b]) for b in stream])
    assert calls == whole


def test_nothing_is_dispatched_before_a_frame_is_whole():
    first = fh.log(C.XTL_INFO, 0, b"c", b"text")
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    rec = Recorder()
    co.feed(rec, first[:-1])
    assert rec.calls == []
    co.feed(rec, first[-1:])
    assert rec.calls == [("log", (C.XTL_INFO, 0, "c", "text"))]


def test_nothing_is_read_after_complete():
    co, calls = decode(_xc.DIR_SAVE, SAVE_FLAGS, [fh.complete(0, 0) + fh.SUSPEND])
    assert calls == [("complete", (0, 0))]
    assert not co.reading


def max_log_frame(fill=b"x"):
    ctx = b"xc"
    overhead = 2 + 4 + 4 + (4 + len(ctx) + 1) + (4 + 1)
    text = fill * (65535 - overhead)
    data = fh.log(C.XTL_DEBUG, 0, ctx, text)
    assert struct.unpack("=H", data[:2])[0] == 65535
    return data, text.decode()


def test_a_64k_frame_split_and_coalesced():
    big, text = max_log_frame()
    stream = big + fh.SUSPEND + big + fh.complete(0, 0)
    expected = [("log", (1, 0, "xc", text)), ("suspend", ()),
                ("log", (1, 0, "xc", text)), ("complete", (0, 0))]
    for chunks in ([stream], [stream[:1], stream[1:]], [stream[:65536], stream[65536:]],
                   [stream[:65537], stream[65537:]], [stream[:70000], stream[70000:]],
                   [stream[i:i + 4096] for i in range(0, len(stream), 4096)]):
        _, calls = decode(_xc.DIR_SAVE, SAVE_FLAGS, chunks)
        assert calls == expected


MALFORMED = [
    ("body-len-0", b"\x00\x00", RuntFrameError, None),
    ("body-len-1", b"\x01\x00\x03", RuntFrameError, None),
    ("unknown-type", fh.bare(99), UnknownMessageError, 99),
    ("type-0", fh.bare(0), UnknownMessageError, 0),
    ("trailing-byte", fh.frame(struct.pack("=H", 3) + b"\x00"), TrailingBytesError, 3),
    ("short-field", fh.frame(struct.pack("=HI", 10, 0)), ShortFrameError, 10),
    ("short-u64", fh.frame(struct.pack("=HIQ", 11, 1, 2) + b"\0\0"), ShortFrameError, 11),
    ("empty-string", fh.frame(struct.pack("=HIII", 1, 1, 0, 0)), EmptyStringError, 1),
    ("unterminated-string",
     fh.frame(struct.pack("=HIII", 1, 1, 0, 2) + b"ab" + fh.string(b"t")),
     UnterminatedStringError, 1),
    ("string-past-body", fh.frame(struct.pack("=HIII", 1, 1, 0, 50) + b"ab\0"),
     ShortFrameError, 1),
    ("wrong-direction", fh.static_data_done(0), WrongDirectionError, 8),
    ("restore-results-in-save", fh.restore_results(1, 2), WrongDirectionError, 9),
    ("cbflag-not-set", fh.POSTCOPY, UnexpectedCallbackError, 4),
]


@pytest.mark.parametrize("name,data,exc,msgtype", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_frames_are_protocol_errors(name, data, exc, msgtype):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    rec = Recorder()
    co.feed(rec, fh.log(1, 0, b"c", b"before"))
    with pytest.raises(exc) as info:
        co.feed(rec, data + fh.log(1, 0, b"c", b"after"))
    assert isinstance(info.value, ProtocolError)
    if msgtype is not None:
        assert info.value.msgtype == msgtype
    assert info.value.offset is not None
    assert not co.reading
    # Nothing after the bad frame was dispatched.
    assert rec.calls == [("log", (1, 0, "c", "before"))]


def test_restore_rejects_switch_qemu_logdirty_and_precopy_policy():
    for data, t in ((fh.logdirty(1, 1), 7), (fh.precopy(1, 2, 3), 11)):
        co = _xc.Callout(_xc.DIR_RESTORE, 0xFFFF)
        with pytest.raises(WrongDirectionError) as info:
            co.feed(Recorder(), data)
        assert info.value.msgtype == t


def test_a_second_request_before_the_reply_is_a_protocol_error():
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    rec = Recorder({"suspend": None})          # deferred: no reply yet
    co.feed(rec, fh.SUSPEND)
    assert co.awaiting == C.MSG_SUSPEND
    co.feed(rec, fh.log(1, 0, b"c", b"a log line is fine meanwhile"))
    with pytest.raises(ProtocolError, match="outstanding"):
        co.feed(rec, fh.logdirty(1, 0))


@pytest.mark.parametrize("cut", [1, 2, 5, len(fh.SUSPEND) + 3])
def test_eof_mid_frame_is_a_truncated_frame_error(cut):
    data = fh.SUSPEND + fh.log(1, 0, b"ctx", b"text")
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    rec = Recorder()
    with pytest.raises(TruncatedFrameError):
        co.feed(rec, data[:cut] if cut != 1 else data[:1], eof=True)
    assert co.eof and not co.reading


def test_eof_at_a_frame_boundary_is_not_an_error():
    co, calls = decode(_xc.DIR_SAVE, SAVE_FLAGS, [fh.SUSPEND], eof=True)
    assert co.eof and calls == [("suspend", ())]


def test_log_tail_keeps_the_last_lines_in_order():
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS, log_tail=3)
    rec = Recorder()
    for i in range(7):
        co.feed(rec, fh.log(C.XTL_WARN, 0, b"xc", b"line %d" % i))
    co.feed(rec, fh.log(C.XTL_ERROR, errno.ENOENT, b"xencall", b"no handle"))
    assert co.log_tail == ("warning: xc: line 5", "warning: xc: line 6",
                           "error: xencall: no handle: " + "No such file or directory")
    assert co.log_lines == 8


# ----------------------------------------------------------------------
# Through a real pipe, from the fake helper.

def run_fake(fake, script, callbacks=None, direction="save", **kw):
    env = fake.env(script)
    if direction == "save":
        op = xensr.SaveOperation(5, _devnull(), callbacks, helper=fake.path, env=env, **kw)
    else:
        op = xensr.RestoreOperation(5, _devnull(), callbacks, helper=fake.path, env=env,
                                    store_evtchn=1, console_evtchn=2, **kw)
    try:
        op.run()
    except xensr.XensrError:
        pass
    return op


_NULL = []


def _devnull():
    if not _NULL:
        import os
        _NULL.append(os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC))
    return _NULL[0]


class Collect:
    def __init__(self):
        self.progress_calls = []
        self.suspends = 0

    def progress(self, *args):
        self.progress_calls.append(args)

    def suspend(self):
        self.suspends += 1
        return True


def progress_stream(n):
    return [fh.progress(b"xc", b"Frames %d" % i, i, n) for i in range(n)]


def test_pipe_frames_split_at_every_byte_boundary(fake):
    frames = progress_stream(3) + [fh.SUSPEND]
    stream = b"".join(frames)
    expected = [("xc", f"Frames {i}", i, 3) for i in range(3)]
    for cut in range(1, len(stream)):
        s = Script()
        # The parent must read the first part before the rest is written.
        s.write(stream[:cut]).sync().write(stream[cut:]).reply().save_ok()
        cb = Collect()
        op = run_fake(fake, s, cb)
        assert op.result().returncode == 0, cut
        assert cb.progress_calls == expected, cut
        assert cb.suspends == 1
        assert fake.report().replies == [1, 0]


def test_pipe_frames_byte_by_byte_and_coalesced(fake):
    frames = progress_stream(4)
    stream = b"".join(frames)
    s = Script()
    for b in stream:
        s.write(bytes([b])).sync()
    s.save_ok()
    one = Collect()
    run_fake(fake, s, one).result()
    s = Script().write(stream).save_ok()
    two = Collect()
    run_fake(fake, s, two).result()
    assert one.progress_calls == two.progress_calls == \
        [("xc", f"Frames {i}", i, 4) for i in range(4)]


def test_pipe_64k_frames_and_pipe_capacity_boundaries(fake):
    big, text = max_log_frame(b"y")
    # 65535/65536/65537 bytes in the pipe at once, and two maximal frames
    # back to back (more than the pipe holds: the helper's write blocks
    # until the parent reads).
    filler = fh.progress(b"xc", b"f", 0, 0)
    s = Script().write(big).write(big + fh.complete(0, 0)).reply()
    op = run_fake(fake, s)
    assert op.result().log_lines == 2
    assert op.log_tail[-1].endswith("y" * 100)
    for total in (65535, 65536, 65537):
        pad = total - len(filler)
        ctx = b"c"
        text_len = pad - (2 + 2 + 8 + 4 + len(ctx) + 1 + 4 + 1)
        data = fh.log(1, 0, ctx, b"z" * text_len) + filler
        assert len(data) == total
        s = Script().write(data).save_ok()
        cb = Collect()
        op = run_fake(fake, s, cb)
        assert op.result().frames == 3
        assert cb.progress_calls == [("xc", "f", 0, 0)]


@pytest.mark.parametrize("name,data,exc,msgtype", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_pipe_malformed_frame_fails_and_kills_the_helper(fake, name, data, exc, msgtype):
    s = Script().write(fh.log(1, 0, b"libxl-save-helper", b"starting save")).write(data)
    s.reply().exit(0)       # a helper waiting for a reply that never comes
    op = run_fake(fake, s)
    with pytest.raises(exc):
        op.result()
    assert op.returncode == fh.SIGKILLED
    assert fake.report().replies == []
    assert op.exception().log_tail == ("debug: libxl-save-helper: starting save",)


@pytest.mark.parametrize("cut", [1, 3, 9])
def test_pipe_eof_mid_frame(fake, cut):
    s = Script().write(fh.log(1, 0, b"ctx", b"text")[:cut]).exit(0)
    op = run_fake(fake, s)
    with pytest.raises(TruncatedFrameError):
        op.result()
