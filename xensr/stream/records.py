"""What the parsers hand back: the headers of each layer and libxl records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from .format import (
    DOMAIN_NAMES,
    LIBXL_OPT_LEGACY,
    XL_FLAG_JSON,
    XL_FLAG_STREAMV2,
    LibxlRecordType,
    libxl_record_name,
    record_wire_size,
)


@dataclass
class XlHeader:
    """The xl save-file header and its optional data."""

    offset: int
    byteorder: int
    mandatory_flags: int
    optional_flags: int
    optional_data_len: int
    #: The domain configuration exactly as stored (JSON text with its
    #: trailing NUL when ``config_is_json``), or None when there is none.
    config: Optional[bytes] = None
    config_offset: Optional[int] = None
    config_len: int = 0
    #: Bytes of optional data after the configuration (xl ignores them).
    extra_optional_data: int = 0
    #: Parsed JSON configuration (when JSON and not too large to parse).
    config_json: Optional[Any] = None
    end_offset: int = 0

    @property
    def config_is_json(self) -> bool:
        return bool(self.mandatory_flags & XL_FLAG_JSON)

    @property
    def stream_v2(self) -> bool:
        return bool(self.mandatory_flags & XL_FLAG_STREAMV2)

    @property
    def config_text(self) -> Optional[str]:
        """The configuration as text, without the trailing NUL of JSON."""
        if self.config is None:
            return None
        data = self.config
        if self.config_is_json and data.endswith(b"\0"):
            data = data[:-1]
        return data.decode("utf-8", errors="replace")

    @property
    def domain_name(self) -> Optional[str]:
        cfg = self.config_json
        if isinstance(cfg, dict):
            c_info = cfg.get("c_info")
            if isinstance(c_info, dict) and isinstance(c_info.get("name"), str):
                name: str = c_info["name"]
                return name
        return None

    def flag_names(self) -> List[str]:
        names = []
        if self.mandatory_flags & XL_FLAG_JSON:
            names.append("JSON")
        if self.mandatory_flags & XL_FLAG_STREAMV2:
            names.append("STREAMv2")
        return names


@dataclass
class LibxlHeader:
    offset: int
    version: int
    options: int

    @property
    def legacy(self) -> bool:
        return bool(self.options & LIBXL_OPT_LEGACY)


@dataclass
class LibxcHeaders:
    offset: int
    version: int
    options: int
    domain_type: int
    page_shift: int
    xen_major: int
    xen_minor: int

    @property
    def domain_type_name(self) -> str:
        return DOMAIN_NAMES.get(self.domain_type, f"type {self.domain_type}")

    @property
    def legacy_converted(self) -> bool:
        return self.xen_major == 0


@dataclass
class LibxlRecord:
    """One libxl record.  ``data`` is the body after the emulator sub-header
    (emulator records) or the whole body, when it was kept."""

    offset: int
    type: int
    length: int
    emulator_id: Optional[int] = None
    emulator_index: Optional[int] = None
    data: Optional[bytes] = None

    @property
    def name(self) -> str:
        return libxl_record_name(self.type)

    @property
    def wire_size(self) -> int:
        return record_wire_size(self.length)

    def xenstore_pairs(self) -> List[Tuple[str, str]]:
        """The (key, value) pairs of an EMULATOR_XENSTORE_DATA record."""
        if self.type != LibxlRecordType.EMULATOR_XENSTORE_DATA or self.data is None:
            raise ValueError("not an EMULATOR_XENSTORE_DATA record with its data")
        if not self.data:
            return []
        parts = self.data[:-1].split(b"\0")
        return [
            (k.decode("utf-8", "replace"), v.decode("utf-8", "replace"))
            for k, v in zip(parts[0::2], parts[1::2])
        ]
