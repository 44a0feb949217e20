"""Streaming parser and validator for xl save files and migration streams.

Three layers can appear in one file (docs/protocol.md §10):

* the xl save-file header (``Xen saved domain, xl format``): magic, byte
  order, flags and optional data holding the domain configuration;
* the libxl migration stream v2 (``LibxlFmt``): a big-endian header, then
  records ``u32 type, u32 length, body, zero padding to 8``;
  ``LIBXC_CONTEXT`` (empty) says the libxc stream follows at once;
* the libxc migration stream v2/v3: image header (big-endian), domain
  header, then records in the same framing, up to and including ``END``
  (or, in a checkpointed stream, a ``CHECKPOINT`` after which libxl
  records up to ``CHECKPOINT_END`` interleave before libxc goes on).

Everything here reads a stream front to back, holding one record header and
at most a bounded chunk of a body at a time, so a file of any size is
checked in a few MiB.  Every problem raises :class:`~xensr.errors.StreamFormatError`
whose ``offset`` is the absolute byte offset of the offending field (or of
the first missing byte when the stream ends early).

The rules enforced are those of the readers of Xen 4.17 to 4.21 (``xl`` restore,
``libxl_stream_read.c``, ``xg_sr_restore*.c``) and of its
``verify-stream-v2``, whichever is stricter:

* magic/ident/marker, versions, byte order, reserved bits and fields;
* unknown mandatory xl flags; a legacy (pre-v2) xl stream;
* record lengths (libxc: at most 128 MiB), zero padding, fixed or minimum
  body sizes, reserved fields inside records;
* ``PAGE_DATA``: at least one pfn, length exactly header + pfns + one page
  per pfn whose type carries data; types 5-8 invalid; types BROKEN,
  XALLOC and XTAB carry no data; reserved pfn bits 52-59 clear;
* record order: LIBXC_CONTEXT first and once, X86_PV_INFO before other PV
  records and once, STATIC_DATA_END at most once and (v3) before any
  PAGE_DATA / X86_PV_P2M_FRAMES, v3-only records not in a v2 stream,
  records valid for the domain type only, CHECKPOINT_END only inside a
  checkpoint, nothing after the final END.

Layout of the package (everything public is importable from here):

* ``format``: the formats' facts in one place: magics, numbers and their
  names, header and body layouts, and per record type where it may appear
  and how long it may be (``LIBXC_RECORDS``);
* ``reader``: :class:`StreamReader`, exact bounded reads from files, pipes
  and non-blocking fds, with the absolute offset;
* ``records``: the headers and libxl records the parsers hand back;
* ``summary``: :class:`Summary`, what a scan found (bounded), and its JSON
  document;
* ``base``, ``xl``, ``libxl``, ``libxc``: one parser per layer; ``libxc``
  dispatches each record by type through a table of handlers;
* ``parser``: :class:`StreamParser`, the layers in order;
* ``scan``: :func:`detect_format`, :func:`scan_fd`, :func:`scan_file`;
* ``report``: :func:`format_summary`, the ``xensr inspect`` text.
"""

from __future__ import annotations

from .format import (
    LIBXC_DHDR,
    LIBXC_ID,
    LIBXC_IHDR,
    LIBXC_MARKER,
    LIBXL_HEADER,
    LIBXL_IDENT,
    LIBXL_VERSION,
    PAGE_SIZE,
    REC_LENGTH_MAX,
    RECORD_HEADER,
    XL_BYTEORDER,
    XL_FLAG_JSON,
    XL_FLAG_STREAMV2,
    XL_HEADER,
    XL_MAGIC,
    DomainType,
    EmulatorId,
    LibxcRecordType,
    LibxlRecordType,
    PageType,
)

# Public names outside __all__: importable as before, re-exported explicitly.
from .format import (
    EMULATOR_HEADER as EMULATOR_HEADER,
    LIBXC_OPT_BIG_ENDIAN as LIBXC_OPT_BIG_ENDIAN,
    LIBXL_OPT_BIG_ENDIAN as LIBXL_OPT_BIG_ENDIAN,
    LIBXL_OPT_LEGACY as LIBXL_OPT_LEGACY,
    PAGE_SHIFT as PAGE_SHIFT,
    PFN_MASK as PFN_MASK,
    PFN_RESERVED_MASK as PFN_RESERVED_MASK,
    PFN_TYPE_SHIFT as PFN_TYPE_SHIFT,
    REC_ALIGN as REC_ALIGN,
    REC_TYPE_OPTIONAL as REC_TYPE_OPTIONAL,
    XL_FLAGS_KNOWN as XL_FLAGS_KNOWN,
    libxc_record_name as libxc_record_name,
    libxl_record_name as libxl_record_name,
)
from .parser import StreamParser
from .reader import StreamReader
from .records import LibxcHeaders, LibxlHeader, LibxlRecord, XlHeader
from .report import format_summary
from .scan import detect_format, scan_fd, scan_file
from .summary import Summary

__all__ = [
    "XL_MAGIC",
    "XL_BYTEORDER",
    "XL_FLAG_JSON",
    "XL_FLAG_STREAMV2",
    "XL_HEADER",
    "LIBXL_IDENT",
    "LIBXL_VERSION",
    "LIBXL_HEADER",
    "LIBXC_MARKER",
    "LIBXC_ID",
    "LIBXC_IHDR",
    "LIBXC_DHDR",
    "RECORD_HEADER",
    "REC_LENGTH_MAX",
    "PAGE_SIZE",
    "LibxlRecordType",
    "LibxcRecordType",
    "EmulatorId",
    "DomainType",
    "PageType",
    "StreamReader",
    "XlHeader",
    "LibxlHeader",
    "LibxcHeaders",
    "LibxlRecord",
    "StreamParser",
    "Summary",
    "detect_format",
    "scan_file",
    "scan_fd",
    "format_summary",
]
