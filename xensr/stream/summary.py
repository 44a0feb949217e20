"""What a scan found, kept within fixed bounds whatever the stream holds,
and the ``inspect --json`` document made from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

from .format import EMULATOR_NAMES
from .records import LibxcHeaders, LibxlHeader, LibxlRecord, XlHeader

if TYPE_CHECKING:  # pragma: no cover
    from array import array

# Bounds on what a scan remembers, so that memory stays small whatever the
# stream holds.
_BITMAP_LEAF_BITS = 15  # one 4 KiB leaf covers 32768 pfns
_BITMAP_MAX_LEAVES = 8192  # 32 MiB of bitmap at most
_MAX_VCPU_IDS = 65536
_MAX_LISTED = 1000
_MAX_TYPE_NAMES = 64
_LEAF_MASK = (1 << _BITMAP_LEAF_BITS) - 1
#: Scattered pfns a scan counts one by one before any page of data pays.
_SCATTERED_ALLOWANCE = 1 << 16
#: Byte -> how many of its bits are set.
_POPCOUNT = bytes(bin(b).count("1") for b in range(256))


class _PfnSet:
    """Distinct pfns seen, as a sparse bitmap of 4 KiB leaves (bounded).

    Pfns come a chunk at a time.  A chunk that is one run of consecutive
    pfns (what libxenguest sends, holes included) is set a byte at a time;
    other pfns go one by one, which costs a Python step each, so they are
    counted only while the stream pays for them: each page of data earns
    one, plus ``_SCATTERED_ALLOWANCE`` to start.  Past that (a stream of
    scattered pfns without data) the count gives up (``overflowed``), so
    that a scan's work stays linear in the bytes read."""

    def __init__(self) -> None:
        self._leaves: Dict[int, bytearray] = {}
        self.count = 0
        self.max_pfn: Optional[int] = None
        self.overflowed = False
        self.allowance = _SCATTERED_ALLOWANCE
        #: Pfns added one by one (what the allowance bounds).
        self.one_by_one = 0

    def add(self, pfn: int) -> None:
        if self.max_pfn is None or pfn > self.max_pfn:
            self.max_pfn = pfn
        leaf = self._leaf(pfn >> _BITMAP_LEAF_BITS)
        if leaf is None:
            return
        bit = pfn & _LEAF_MASK
        mask = 1 << (bit & 7)
        idx = bit >> 3
        if not leaf[idx] & mask:
            leaf[idx] |= mask
            self.count += 1

    def add_chunk(self, pfns: "array[int]", with_data: int, *, run: bool) -> None:
        """Adds the pfns of a chunk of a PAGE_DATA record, ``with_data`` of
        which carry a page; ``run``: they are consecutive."""
        self.allowance += with_data
        n = len(pfns)
        if run:
            self.add_run(pfns[0], n)
            return
        high = max(pfns)
        if self.max_pfn is None or high > self.max_pfn:
            self.max_pfn = high
        if self.overflowed:
            return
        if n > self.allowance:
            self.overflowed = True  # scattered pfns without data: stop counting
            return
        self.allowance -= n
        self.one_by_one += n
        for pfn in pfns:
            self.add(pfn)

    def add_run(self, first: int, n: int) -> None:
        """Adds pfns first .. first + n - 1."""
        end = first + n
        if self.max_pfn is None or end - 1 > self.max_pfn:
            self.max_pfn = end - 1
        pfn = first
        while pfn < end:
            leaf = self._leaf(pfn >> _BITMAP_LEAF_BITS)
            lo = pfn & _LEAF_MASK
            hi = min(_LEAF_MASK + 1, lo + end - pfn)
            if leaf is None:
                return
            self.count += _set_bits(leaf, lo, hi)
            pfn += hi - lo

    def _leaf(self, key: int) -> Optional[bytearray]:
        leaf = self._leaves.get(key)
        if leaf is None:
            if len(self._leaves) >= _BITMAP_MAX_LEAVES:
                self.overflowed = True
                return None
            leaf = self._leaves[key] = bytearray(1 << (_BITMAP_LEAF_BITS - 3))
        return leaf


def _set_bits(leaf: bytearray, lo: int, hi: int) -> int:
    """Sets bits lo .. hi - 1 of ``leaf``; returns how many were clear."""
    new = 0
    while lo < hi and lo & 7:  # the partial byte at the start
        new += _set_bit(leaf, lo)
        lo += 1
    whole_end = hi & ~7
    if lo < whole_end:
        a, b = lo >> 3, whole_end >> 3
        new += (b - a) * 8 - sum(leaf[a:b].translate(_POPCOUNT))
        leaf[a:b] = b"\xff" * (b - a)
        lo = whole_end
    while lo < hi:  # the partial byte at the end
        new += _set_bit(leaf, lo)
        lo += 1
    return new


def _set_bit(leaf: bytearray, bit: int) -> int:
    mask = 1 << (bit & 7)
    if leaf[bit >> 3] & mask:
        return 0
    leaf[bit >> 3] |= mask
    return 1


@dataclass
class _TypeStat:
    count: int = 0
    bytes: int = 0


@dataclass
class Summary:
    """What a scan found.  ``to_dict()`` is the ``inspect --json`` document."""

    path: Optional[str] = None
    size: Optional[int] = None
    format: str = ""
    xl: Optional[XlHeader] = None
    libxl: Optional[LibxlHeader] = None
    libxc: Optional[LibxcHeaders] = None
    libxl_records: List[LibxlRecord] = field(default_factory=list)
    libxl_record_count: int = 0
    libxl_by_type: Dict[str, _TypeStat] = field(default_factory=dict)
    libxc_by_type: Dict[str, _TypeStat] = field(default_factory=dict)
    libxc_offset: Optional[int] = None
    libxc_bytes: int = 0
    page_records: int = 0
    pages: int = 0
    pages_with_data: int = 0
    page_types: Dict[str, int] = field(default_factory=dict)
    pfns: _PfnSet = field(default_factory=_PfnSet)
    pv_guest_width: Optional[int] = None
    pv_pt_levels: Optional[int] = None
    vcpu_ids: Set[int] = field(default_factory=set)
    vcpu_ids_truncated: bool = False
    hvm_vcpus: Optional[int] = None
    vcpu_source: Optional[str] = None
    tsc: Optional[Dict[str, int]] = None
    hvm_params: Optional[int] = None
    checkpoints: int = 0
    checkpoint_ends: int = 0
    pages_per_checkpoint: List[int] = field(default_factory=list)
    optional_records_skipped: int = 0
    #: "END" when the stream ends with its END record, "checkpoint" when a
    #: checkpointed stream stops after a complete checkpoint (no END: the
    #: receiver fails over to the last checkpoint).
    ended: str = ""
    end_offset: int = 0

    # -- derived

    @property
    def vcpus(self) -> Optional[int]:
        if self.vcpu_source == "HVM_CONTEXT":
            return self.hvm_vcpus
        if self.vcpu_ids:
            return len(self.vcpu_ids)
        return None

    # -- what the parsers report (each bounded)

    def count_libxl_record(self, rec: LibxlRecord) -> None:
        self.libxl_record_count += 1
        if len(self.libxl_records) < _MAX_LISTED:
            self.libxl_records.append(
                LibxlRecord(rec.offset, rec.type, rec.length, rec.emulator_id, rec.emulator_index)
            )
        self._count(self.libxl_by_type, rec.name, rec.wire_size)

    def count_libxc_record(self, name: str, wire: int, times: int = 1) -> None:
        """``times`` libxc records of type ``name``, ``wire`` bytes each."""
        self.libxc_bytes += wire * times
        self._count(self.libxc_by_type, name, wire, times)

    def _count(self, table: Dict[str, _TypeStat], name: str, wire: int, times: int = 1) -> None:
        st = table.get(name)
        if st is None:
            if name.startswith("0x") and len(table) >= _MAX_TYPE_NAMES:
                name = "other"  # unknown types: bounded, whatever the stream holds
                st = table.get(name)
            if st is None:
                st = table[name] = _TypeStat()
        st.count += times
        st.bytes += wire * times

    def add_vcpu_id(self, vcpu_id: int) -> None:
        if len(self.vcpu_ids) < _MAX_VCPU_IDS:
            self.vcpu_ids.add(vcpu_id)
        elif vcpu_id not in self.vcpu_ids:
            self.vcpu_ids_truncated = True

    def add_checkpoint(self, pages: int) -> None:
        """A libxc CHECKPOINT after ``pages`` pages since the previous one."""
        self.checkpoints += 1
        if len(self.pages_per_checkpoint) < _MAX_LISTED:
            self.pages_per_checkpoint.append(pages)

    # -- the JSON document

    def to_dict(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {
            "file": self.path,
            "size": self.size,
            "format": self.format,
            "valid": True,
            "ended": self.ended,
            "end_offset": self.end_offset,
        }
        if self.xl is not None:
            doc["xl_header"] = _xl_doc(self.xl)
        if self.libxl is not None:
            doc["libxl"] = _libxl_doc(self, self.libxl)
        if self.libxc is not None:
            doc["libxc"] = _libxc_doc(self, self.libxc)
            doc["pages"] = _pages_doc(self)
            doc["vcpus"] = _vcpus_doc(self)
            doc["checkpoints"] = {
                "count": self.checkpoints,
                "checkpoint_ends": self.checkpoint_ends,
                "pages_per_checkpoint": list(self.pages_per_checkpoint),
            }
        return doc


# The pieces of Summary.to_dict, one per section of the document.


def _xl_doc(x: XlHeader) -> Dict[str, Any]:
    return {
        "offset": x.offset,
        "byteorder": f"0x{x.byteorder:08x}",
        "mandatory_flags": x.mandatory_flags,
        "mandatory_flag_names": x.flag_names(),
        "optional_flags": x.optional_flags,
        "optional_data_length": x.optional_data_len,
        "config_offset": x.config_offset,
        "config_length": x.config_len,
        "config_format": (None if not x.config_len else ("json" if x.config_is_json else "xl")),
        "config_parsed": x.config_json is not None,
        "domain_name": x.domain_name,
        "extra_optional_data": x.extra_optional_data,
        "length": x.end_offset - x.offset,
    }


def _libxl_record_doc(r: LibxlRecord) -> Dict[str, Any]:
    doc: Dict[str, Any] = {"offset": r.offset, "type": r.type, "name": r.name, "length": r.length}
    if r.emulator_id is not None:
        doc["emulator"] = EMULATOR_NAMES.get(r.emulator_id, str(r.emulator_id))
        doc["emulator_index"] = r.emulator_index
    return doc


def _by_type_doc(table: Dict[str, _TypeStat]) -> Dict[str, Dict[str, int]]:
    return {k: vars(v) for k, v in table.items()}


def _libxl_doc(s: Summary, h: LibxlHeader) -> Dict[str, Any]:
    return {
        "offset": h.offset,
        "version": h.version,
        "options": h.options,
        "legacy_converted": h.legacy,
        "record_count": s.libxl_record_count,
        "records": [_libxl_record_doc(r) for r in s.libxl_records],
        "records_listed": len(s.libxl_records),
        "by_type": _by_type_doc(s.libxl_by_type),
    }


def _libxc_doc(s: Summary, h: LibxcHeaders) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "offset": h.offset,
        "version": h.version,
        "options": h.options,
        "domain_type": h.domain_type_name,
        "page_shift": h.page_shift,
        "page_size": 1 << h.page_shift,
        "xen_version": None if h.legacy_converted else f"{h.xen_major}.{h.xen_minor}",
        "legacy_converted": h.legacy_converted,
        "bytes": s.libxc_bytes,
        "by_type": _by_type_doc(s.libxc_by_type),
        "optional_records_skipped": s.optional_records_skipped,
    }
    if s.pv_guest_width is not None:
        doc["pv_guest_width"] = s.pv_guest_width
        doc["pv_pt_levels"] = s.pv_pt_levels
    if s.tsc is not None:
        doc["tsc"] = s.tsc
    if s.hvm_params is not None:
        doc["hvm_params"] = s.hvm_params
    return doc


def _pages_doc(s: Summary) -> Dict[str, Any]:
    return {
        "records": s.page_records,
        "total": s.pages,
        "with_data": s.pages_with_data,
        "distinct_pfns": None if s.pfns.overflowed else s.pfns.count,
        "resent": None if s.pfns.overflowed else s.pages - s.pfns.count,
        "max_pfn": s.pfns.max_pfn,
        "by_type": dict(s.page_types),
    }


def _vcpus_doc(s: Summary) -> Dict[str, Any]:
    return {
        "count": s.vcpus,
        "source": s.vcpu_source,
        "ids": sorted(s.vcpu_ids) if s.vcpu_source != "HVM_CONTEXT" else None,
        "ids_truncated": s.vcpu_ids_truncated,
    }
