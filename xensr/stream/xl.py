"""The xl save-file header: magic, byte order, flags, and the optional data
holding the domain configuration."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from .base import Layer, fail
from .format import (
    XL_BYTEORDER,
    XL_BYTEORDER_SWAPPED,
    XL_CONFIG_LEN,
    XL_FLAGS_KNOWN,
    XL_HEADER,
    XL_MAGIC,
    XL_OFF_BYTEORDER,
    XL_OFF_MANDATORY_FLAGS,
    XL_OFF_OPTIONAL_DATA_LEN,
)
from .records import XlHeader

#: Largest configuration kept in memory (and parsed) by default.
MAX_JSON_CONFIG = 16 << 20


class XlParser(Layer):
    def parse_header(self, *, max_config: Optional[int] = None, skip_large_config: bool = True) -> XlHeader:
        """Reads the xl header and its optional data.

        A configuration larger than ``max_config`` (default 16 MiB) is
        streamed past (not kept: ``config`` stays None) when
        ``skip_large_config``, else it is an error."""
        if max_config is None:
            max_config = MAX_JSON_CONFIG
        hdr = self._fixed_header()
        if hdr.optional_data_len:
            self._optional_data(hdr, max_config, skip_large_config)
        hdr.end_offset = self.r.offset
        if not hdr.stream_v2:
            raise fail(
                hdr.offset + XL_OFF_MANDATORY_FLAGS,
                "xl header lacks the STREAMv2 flag: a legacy (pre-Xen 4.6) stream, which is not supported",
                "legacy stream",
            )
        self.s.xl = hdr
        return hdr

    def _fixed_header(self) -> XlHeader:
        start = self.r.offset
        raw = self.r.read_exact(XL_HEADER.size, "the xl save-file header")
        magic, byteorder, mflags, oflags, optlen = XL_HEADER.unpack(raw)
        if magic != XL_MAGIC:
            bad = next(i for i in range(len(XL_MAGIC)) if magic[i] != XL_MAGIC[i])
            raise fail(start + bad, "not an xl save file: bad magic", "bad xl magic")
        if byteorder != XL_BYTEORDER:
            if byteorder == XL_BYTEORDER_SWAPPED:
                msg = f"xl header byte order 0x{byteorder:08x}: written on a host of the other endianness"
            else:
                msg = f"xl header byte order 0x{byteorder:08x} is not 0x{XL_BYTEORDER:08x}"
            raise fail(start + XL_OFF_BYTEORDER, msg, "bad byte order")
        unknown = mflags & ~XL_FLAGS_KNOWN
        if unknown:
            raise fail(
                start + XL_OFF_MANDATORY_FLAGS,
                f"xl header has unknown mandatory flags 0x{unknown:x} (of 0x{mflags:x})",
                "unknown mandatory flags",
            )
        return XlHeader(
            offset=start,
            byteorder=byteorder,
            mandatory_flags=mflags,
            optional_flags=oflags,
            optional_data_len=optlen,
        )

    def _optional_data(self, hdr: XlHeader, max_config: int, skip_large_config: bool) -> None:
        """xl: u32 config_len, then config_len bytes; the rest is ignored."""
        r = self.r
        optlen = hdr.optional_data_len
        opt_start = r.offset
        if optlen < XL_CONFIG_LEN.size:
            raise fail(
                hdr.offset + XL_OFF_OPTIONAL_DATA_LEN,
                f"xl optional data of {optlen} bytes cannot hold the 4-byte configuration length",
                "optional data too short",
            )
        (clen,) = XL_CONFIG_LEN.unpack(r.read_exact(XL_CONFIG_LEN.size, "the xl configuration length"))
        left = optlen - XL_CONFIG_LEN.size
        if clen > left:
            raise fail(
                opt_start,
                f"xl configuration length {clen} exceeds the {left} bytes of optional data left",
                "configuration length exceeds optional data",
            )
        hdr.config_len = clen
        hdr.config_offset = r.offset
        if clen > max_config:
            if not skip_large_config:
                raise fail(
                    opt_start,
                    f"xl configuration of {clen} bytes exceeds the {max_config}-byte limit",
                    "configuration too large",
                )
            self._skip_config(hdr)
        elif clen:
            hdr.config = r.read_exact(clen, "the xl domain configuration")
            if hdr.config_is_json:
                hdr.config_json = _check_json_config(hdr.config, hdr.config_offset)
        hdr.extra_optional_data = left - clen
        r.skip(hdr.extra_optional_data, "the xl optional data")

    def _skip_config(self, hdr: XlHeader) -> None:
        """Streams past a configuration too large to keep; only the
        terminating NUL can be checked."""
        r = self.r
        r.skip(hdr.config_len - 1, "the xl domain configuration")
        last = r.read_exact(1, "the xl domain configuration")
        if hdr.config_is_json and last != b"\0":
            raise fail(
                r.offset - 1, "JSON domain configuration is not NUL-terminated", "configuration not NUL-terminated"
            )


def _check_json_config(config: bytes, offset: int) -> Optional[Any]:
    """The parsed JSON configuration (None when too large to parse)."""
    if not config.endswith(b"\0"):
        raise fail(
            offset + len(config) - 1,
            "JSON domain configuration is not NUL-terminated",
            "configuration not NUL-terminated",
        )
    body = config[:-1]
    nul = body.find(b"\0")
    if nul >= 0:
        raise fail(offset + nul, "JSON domain configuration contains a NUL byte", "NUL in configuration")
    if len(body) > MAX_JSON_CONFIG:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(offset + e.start, "JSON domain configuration is not UTF-8", "configuration not UTF-8")
    return parse_json_config(text, offset)


def parse_json_config(text: str, offset: int) -> Any:
    """``text`` parsed as JSON; anything it cannot be turned into, including
    valid JSON that Python's parser refuses (nesting deeper than its
    recursion allows, integers longer than its digit limit), is a
    :class:`StreamFormatError` at ``offset`` plus where in ``text`` it is."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where, message = e.pos, f"does not parse: {e.msg}"
    except RecursionError:
        where, message = _deepest_bracket(text), "is nested deeper than Python's JSON parser can go"
    except ValueError as e:  # an integer beyond Python's digit limit
        where, message = _longest_number(text), f"holds a number Python cannot convert: {e}"
    pos = len(text[:where].encode("utf-8"))
    raise fail(offset + pos, f"JSON domain configuration {message}", "configuration not JSON")


#: JSON's tokens that matter for locating a problem: a whole string (its
#: brackets and digits are text), a bracket, a run of digits.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]|[0-9]+')


def _deepest_bracket(text: str) -> int:
    """Where the first bracket at the greatest nesting depth opens."""
    depth = deepest = where = 0
    for m in _TOKENS.finditer(text):
        c = m.group()[0]
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest, where = depth, m.start()
        elif c in "]}":
            depth -= 1
    return where


def _longest_number(text: str) -> int:
    """Where the longest run of digits outside strings starts."""
    longest = where = 0
    for m in _TOKENS.finditer(text):
        if m.group()[0].isdigit() and len(m.group()) > longest:
            longest, where = len(m.group()), m.start()
    return where
