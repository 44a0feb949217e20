# The wire format's fixed parts, for the decoders generated into _msgs.pxi
# (which includes this file after defining _NAMES, the message names by
# number).  Nothing here depends on the message table: a STRING is a u32
# length counting its NUL, the bytes, the NUL; a BLOCK is a u32 length and
# the bytes; integers are native-endian (docs/protocol.md §4.2).

from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from xensr.errors import (
    EmptyStringError,
    ShortFrameError,
    TrailingBytesError,
    UnknownMessageError,
    UnterminatedStringError,
    WrongDirectionError,
)

# What _string_end found wrong (all negative: a valid end is >= 0).
cdef enum:
    WIRE_SHORT_LENGTH = -1      # fewer than 4 bytes left for the length
    WIRE_EMPTY = -2             # length 0: not even the NUL
    WIRE_SHORT_DATA = -3        # the length runs past the body
    WIRE_NO_NUL = -4            # the last byte is not NUL


cdef inline str _name_of(int msgtype):
    if 0 < msgtype < len(_NAMES):
        return _NAMES[msgtype]
    return None


cdef inline Py_ssize_t _string_end(const unsigned char *body, Py_ssize_t n,
                                   Py_ssize_t at) noexcept:
    """The offset after a well-formed STRING at ``at``, or a WIRE_* code."""
    cdef uint32_t length
    if n - at < 4:
        return WIRE_SHORT_LENGTH
    memcpy(&length, body + at, 4)
    if length == 0:
        return WIRE_EMPTY
    if <uint64_t>(n - at - 4) < <uint64_t>length:
        return WIRE_SHORT_DATA
    if body[at + 4 + length - 1] != 0:
        return WIRE_NO_NUL
    return at + 4 + length


cdef inline Py_ssize_t _block_end(const unsigned char *body, Py_ssize_t n,
                                  Py_ssize_t at) noexcept:
    """The offset after a BLOCK at ``at``, or a WIRE_* code."""
    cdef uint32_t length
    if n - at < 4:
        return WIRE_SHORT_LENGTH
    memcpy(&length, body + at, 4)
    if <uint64_t>(n - at - 4) < <uint64_t>length:
        return WIRE_SHORT_DATA
    return at + 4 + length


cdef object _short(int msgtype, str field, Py_ssize_t off, Py_ssize_t need, Py_ssize_t n):
    name = _name_of(msgtype)
    raise ShortFrameError(
        f"{name} message (type {msgtype}): field {field} needs {need} bytes at "
        f"offset {off} but the body has {n - off} left",
        msgtype=msgtype, msgname=name, offset=off)


cdef object _read_string(const unsigned char *body, Py_ssize_t n, Py_ssize_t *off,
                         int msgtype, str field):
    cdef uint32_t length
    cdef Py_ssize_t at = off[0]
    cdef Py_ssize_t end = _string_end(body, n, at)
    if end == WIRE_SHORT_LENGTH:
        _short(msgtype, field, at, 4, n)
    memcpy(&length, body + at, 4)
    if end == WIRE_EMPTY:
        name = _name_of(msgtype)
        raise EmptyStringError(
            f"{name} message (type {msgtype}): STRING {field} at offset {at} "
            "has length 0 (it must hold at least its NUL)",
            msgtype=msgtype, msgname=name, offset=at)
    if end == WIRE_SHORT_DATA:
        _short(msgtype, field, at + 4, <Py_ssize_t>length, n)
    if end == WIRE_NO_NUL:
        name = _name_of(msgtype)
        raise UnterminatedStringError(
            f"{name} message (type {msgtype}): STRING {field} starting at {at} "
            f"does not end in NUL: byte at offset {at + 4 + length - 1} is "
            f"{body[at + 4 + length - 1]:#04x}",
            msgtype=msgtype, msgname=name, offset=at + 4 + length - 1)
    off[0] = end
    return (<const char *>body + at + 4)[:length - 1].decode("utf-8", "backslashreplace")


cdef object _read_block(const unsigned char *body, Py_ssize_t n, Py_ssize_t *off,
                        int msgtype, str field):
    cdef uint32_t length
    cdef Py_ssize_t at = off[0]
    cdef Py_ssize_t end = _block_end(body, n, at)
    if end == WIRE_SHORT_LENGTH:
        _short(msgtype, field, at, 4, n)
    memcpy(&length, body + at, 4)
    if end == WIRE_SHORT_DATA:
        _short(msgtype, field, at + 4, <Py_ssize_t>length, n)
    off[0] = end
    return (<const char *>body + at + 4)[:length]


cdef object _trailing(int msgtype, Py_ssize_t off, Py_ssize_t n):
    name = _name_of(msgtype)
    raise TrailingBytesError(
        f"{name} message (type {msgtype}): {n - off} trailing bytes at offset {off}",
        msgtype=msgtype, msgname=name, offset=off)


cdef object _too_short_for_type(Py_ssize_t n):
    raise ShortFrameError(
        f"frame body of {n} bytes is too short for a message type", offset=0)


cdef object _unknown_type(int msgtype):
    raise UnknownMessageError(
        f"unknown message type {msgtype} (the table has 1 to {len(_NAMES) - 1})",
        msgtype=msgtype, offset=0)


cdef object _wrong_direction(int msgtype, int direction):
    name = _name_of(msgtype)
    which = "save" if direction == DIR_SAVE else "restore"
    raise WrongDirectionError(
        f"{name} message (type {msgtype}) is not valid when the helper does a {which}",
        msgtype=msgtype, msgname=name, offset=0)


cdef bytes _encode_reply(object value):
    """The 4-byte native int the helper reads as a reply."""
    cdef int32_t v
    if not -0x80000000 <= value <= 0x7fffffff:
        raise OverflowError(f"reply {value!r} does not fit a C int")
    v = value
    return (<char *>&v)[:4]


def encode_reply(value):
    """The 4-byte native int the helper reads as a reply."""
    return _encode_reply(value)


def decode_frame_body(body, int direction):
    """Decode one frame body (after the u16 length) into (msgtype, args)."""
    cdef const unsigned char[::1] view = body
    if view.shape[0] == 0:
        return _decode_body(NULL, 0, direction)
    return _decode_body(&view[0], view.shape[0], direction)
