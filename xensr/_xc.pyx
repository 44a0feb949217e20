# cython: language_level=3
"""xensr's callout: runs the save/restore helper and speaks its protocol."""

from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from .errors import (
    EmptyStringError,
    ShortFrameError,
    TrailingBytesError,
    UnknownMessageError,
    UnterminatedStringError,
    WrongDirectionError,
)

include "_msgs.pxi"
