"""xensr.stream's tables: every record type has its rule and its handler,
and the names the single-module xensr.stream offered still import."""

from __future__ import annotations

import xensr.stream
from xensr.stream import format as fmt
from xensr.stream import libxc


def test_every_libxc_record_type_has_a_rule_and_only_those():
    assert set(fmt.LIBXC_RECORDS) == {int(t) for t in fmt.LibxcRecordType}


def test_every_libxc_record_the_main_stream_carries_has_a_handler():
    carried = {t for t, rule in fmt.LIBXC_RECORDS.items() if not rule.refused}
    assert set(libxc._HANDLERS) == carried
    refused = {t for t, rule in fmt.LIBXC_RECORDS.items() if rule.refused}
    assert refused == {fmt.LibxcRecordType.TOOLSTACK, fmt.LibxcRecordType.CHECKPOINT_DIRTY_PFN_LIST}


def test_every_libxl_record_type_is_classified_once():
    groups = [fmt.LIBXL_EMPTY_RECORDS, fmt.LIBXL_EMULATOR_RECORDS, frozenset(fmt.LIBXL_REFUSED_RECORDS)]
    assert sum(len(g) for g in groups) == len(fmt.LibxlRecordType)
    assert frozenset().union(*groups) == {int(t) for t in fmt.LibxlRecordType}
    assert fmt.LIBXL_SECTION_ENDS <= fmt.LIBXL_EMPTY_RECORDS


def test_body_length_rules():
    assert fmt.BodyLength("0", exact=0).ok(0) and not fmt.BodyLength("0", exact=0).ok(8)
    policy = fmt.LIBXC_RECORDS[fmt.LibxcRecordType.X86_CPUID_POLICY].length
    assert policy is not None
    assert [n for n in range(0, 80) if policy.ok(n)] == [24, 48, 72]
    assert policy.expect == "a non-zero multiple of 24"


# Every public name of the single-module xensr.stream, before it became a package.
OLD_PUBLIC_NAMES = """
    DomainType EMULATOR_HEADER EmulatorId LIBXC_DHDR LIBXC_ID LIBXC_IHDR LIBXC_MARKER
    LIBXC_OPT_BIG_ENDIAN LIBXL_HEADER LIBXL_IDENT LIBXL_OPT_BIG_ENDIAN LIBXL_OPT_LEGACY
    LIBXL_VERSION LibxcHeaders LibxcRecordType LibxlHeader LibxlRecord LibxlRecordType
    PAGE_SHIFT PAGE_SIZE PFN_MASK PFN_RESERVED_MASK PFN_TYPE_SHIFT PageType RECORD_HEADER
    REC_ALIGN REC_LENGTH_MAX REC_TYPE_OPTIONAL StreamParser StreamReader Summary
    XL_BYTEORDER XL_FLAGS_KNOWN XL_FLAG_JSON XL_FLAG_STREAMV2 XL_HEADER XL_MAGIC XlHeader
    detect_format format_summary libxc_record_name libxl_record_name scan_fd scan_file
""".split()

OLD_ALL = """
    XL_MAGIC XL_BYTEORDER XL_FLAG_JSON XL_FLAG_STREAMV2 XL_HEADER LIBXL_IDENT LIBXL_VERSION
    LIBXL_HEADER LIBXC_MARKER LIBXC_ID LIBXC_IHDR LIBXC_DHDR RECORD_HEADER REC_LENGTH_MAX
    PAGE_SIZE LibxlRecordType LibxcRecordType EmulatorId DomainType PageType StreamReader
    XlHeader LibxlHeader LibxcHeaders LibxlRecord StreamParser Summary detect_format
    scan_file scan_fd format_summary
""".split()


def test_the_package_keeps_the_module_s_public_names():
    missing = [n for n in OLD_PUBLIC_NAMES if not hasattr(xensr.stream, n)]
    assert missing == []
    assert xensr.stream.__all__ == OLD_ALL
    namespace: dict = {}
    exec("from xensr.stream import *", namespace)
    assert set(OLD_ALL) <= set(namespace)

