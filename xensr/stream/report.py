"""The human-readable ``xensr inspect`` report (the JSON one is
:meth:`Summary.to_dict`)."""

from __future__ import annotations

from typing import List, Optional

from .format import EMULATOR_NAMES
from .records import LibxcHeaders, LibxlHeader, XlHeader
from .summary import Summary

_FORMAT_NAMES = {
    "xl": "xl save file",
    "libxl": "libxl migration stream v2",
    "libxc": "libxc migration stream",
}
#: Pages per checkpoint listed on the checkpoints line.
_CHECKPOINTS_SHOWN = 20


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_summary(s: Summary) -> str:
    """The human-readable ``xensr inspect`` report."""
    name = s.path or "<stream>"
    ended = "ends with END" if s.ended == "END" else "ends after a complete checkpoint (no END)"
    size = _size(s.size if s.size is not None else s.end_offset)
    out = [f"{name}: {_FORMAT_NAMES.get(s.format, s.format)}, {size}, valid, {ended}"]
    if s.xl is not None:
        out += _xl_lines(s.xl)
    if s.libxl is not None:
        out += _libxl_lines(s, s.libxl)
    if s.libxc is not None:
        out += _libxc_lines(s, s.libxc)
        out += _pages_lines(s)
        vc = s.vcpus
        out.append(f"vCPUs                 {'unknown' if vc is None else vc} (from {s.vcpu_source})")
        out.append(_checkpoints_line(s))
    return "\n".join(out) + "\n"


def _config_line(x: XlHeader) -> str:
    kind = "JSON" if x.config_is_json else "xl text"
    if x.config is None and x.config_len:
        return f"  configuration       {x.config_len} bytes at offset {x.config_offset}, {kind}, too large to show"
    if x.config is None:
        return "  configuration       none"
    extra = ""
    if x.config_is_json and x.config_json is None:
        extra = ", too large to parse"
    if x.domain_name is not None:
        extra += f', domain name "{x.domain_name}"'
    return f"  configuration       {x.config_len} bytes at offset {x.config_offset}, {kind}{extra}"


def _xl_lines(x: XlHeader) -> List[str]:
    out = [
        f"xl header (offset {x.offset}, {x.end_offset - x.offset} bytes)",
        f"  byte order          0x{x.byteorder:08x} (native)",
        f"  mandatory flags     0x{x.mandatory_flags:x} ({', '.join(x.flag_names()) or 'none'})",
        f"  optional flags      0x{x.optional_flags:x}",
        f"  optional data       {x.optional_data_len} bytes",
        _config_line(x),
    ]
    if x.extra_optional_data:
        out.append(f"  extra optional data {x.extra_optional_data} bytes (ignored)")
    return out


def _libxl_lines(s: Summary, h: LibxlHeader) -> List[str]:
    legacy = ", converted from a legacy stream" if h.legacy else ""
    out = [
        f"libxl stream v{h.version} (offset {h.offset}), options 0x{h.options:x}{legacy}",
        f"  records             {s.libxl_record_count}",
    ]
    for rec in s.libxl_records:
        extra = ""
        if rec.emulator_id is not None:
            emu = EMULATOR_NAMES.get(rec.emulator_id, str(rec.emulator_id))
            extra = f" ({emu}, index {rec.emulator_index})"
        out.append(f"    offset {rec.offset:<12} {rec.name:<24} {rec.length:>10} bytes{extra}")
    if len(s.libxl_records) < s.libxl_record_count:
        out.append(f"    ... {s.libxl_record_count - len(s.libxl_records)} more")
    return out


def _libxc_lines(s: Summary, h: LibxcHeaders) -> List[str]:
    origin = "converted from a legacy stream" if h.legacy_converted else f"from Xen {h.xen_major}.{h.xen_minor}"
    out = [
        f"libxc stream v{h.version} (offset {h.offset}, {_size(s.libxc_bytes)})",
        f"  domain              {h.domain_type_name}, page size {1 << h.page_shift}, {origin}",
    ]
    if s.pv_guest_width is not None:
        out.append(f"  PV guest            {s.pv_guest_width * 8}-bit, {s.pv_pt_levels} page-table levels")
    out.append(f"  {'record type':<26} {'count':>10} {'bytes':>14}")
    for tname, st in s.libxc_by_type.items():
        out.append(f"  {tname:<26} {st.count:>10} {st.bytes:>14}")
    if s.optional_records_skipped:
        out.append(f"  ({s.optional_records_skipped} optional records of unknown type skipped)")
    return out


def _pages_lines(s: Summary) -> List[str]:
    distinct = "?" if s.pfns.overflowed else str(s.pfns.count)
    resent = "?" if s.pfns.overflowed else str(s.pages - s.pfns.count)
    maxpfn = "-" if s.pfns.max_pfn is None else f"0x{s.pfns.max_pfn:x}"
    out = [
        f"pages                 {s.pages} in {s.page_records} records, {s.pages_with_data} with data, "
        f"{distinct} distinct pfns (max {maxpfn}), {resent} sent again"
    ]
    if s.page_types:
        out.append("  by type             " + ", ".join(f"{k} {v}" for k, v in s.page_types.items()))
    return out


def _checkpoints_line(s: Summary) -> str:
    line = f"checkpoints           {s.checkpoints}"
    if s.checkpoints:
        line += f" ({s.checkpoint_ends} CHECKPOINT_END)"
        per = s.pages_per_checkpoint[:_CHECKPOINTS_SHOWN]
        line += ", pages per checkpoint: " + " ".join(str(p) for p in per)
        if len(s.pages_per_checkpoint) > _CHECKPOINTS_SHOWN or s.checkpoints > len(s.pages_per_checkpoint):
            line += " ..."
    return line
