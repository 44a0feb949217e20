"""The campaign's reading of libFuzzer's output, and a finding naming
itself the same way whatever input caused it."""

from __future__ import annotations

import pytest

pytest.importorskip("atheris")

from fuzz.__main__ import Stats, markdown, parse_output  # noqa: E402
from fuzz.targets import Finding, signature  # noqa: E402

CLEAN = """\
INFO:       54 files found in build/fuzz/seeds/stream
#55	INITED cov: 540 ft: 1200 corp: 40/90Kb exec/s: 0 rss: 46Mb
#1024	pulse  cov: 560 ft: 1290 corp: 60/95Kb lim: 4096 exec/s: 512 rss: 46Mb
#20000	DONE   cov: 566 ft: 1311 corp: 70/99Kb lim: 8192 exec/s: 2000 rss: 46Mb
Done 20000 runs in 10 second(s)
stat::number_of_executed_units: 20000
stat::average_exec_per_sec:     2000
"""

CRASHED = """\
#61	INITED cov: 133 ft: 172 corp: 9/5417b exec/s: 0 rss: 44Mb
xensr-fuzz known: 1 OverflowError in xensr/_wire.pxi:xensr._xc._encode_reply
xensr-fuzz known: 2 OverflowError in xensr/_wire.pxi:xensr._xc._encode_reply
#700	NEW    cov: 140 ft: 190 corp: 12/6000b lim: 4096 exec/s: 0 rss: 44Mb L: 3/4 MS: 1 ChangeBit-

xensr-fuzz signature: OverflowError in xensr/_xc.pyx:xensr._xc.format_log_line
==1== ERROR: libFuzzer: fuzz target exited
artifact_prefix='x/'; Test unit written to x/crash-abc
stat::number_of_executed_units: 1588
"""


def test_a_clean_run_adds_its_executions_and_coverage():
    s = Stats("stream")
    assert parse_output(CLEAN, s) is None
    assert (s.runs, s.cov, s.ft, s.corpus) == (20000, 566, 1311, 70)
    assert s.findings == {}


def test_a_run_ending_on_a_finding_records_it_and_the_known_repeats():
    s = Stats("callout")
    assert parse_output(CLEAN, s) is None
    sig = parse_output(CRASHED, s)
    assert sig == "OverflowError in xensr/_xc.pyx:xensr._xc.format_log_line"
    assert s.findings == {sig: "x/crash-abc"}
    assert s.runs == 21588
    assert (s.cov, s.ft) == (566, 1311)        # the best seen, not the last
    assert s.repeats == {"OverflowError in xensr/_wire.pxi:xensr._xc._encode_reply": 2}
    s.seconds = 10.0
    table = markdown([s], "today", "python -m fuzz campaign")
    assert "| callout | 21,588 | 10 | 2,159 | 566 | 1311 |" in table
    assert "format_log_line (seen 1+ times)" in table


def _raise_from_here(value):
    return int(value)


def test_signatures_name_the_exception_and_the_innermost_project_frame():
    sigs = set()
    for bad in ("x", "y", "1.5"):
        try:
            _raise_from_here(bad)
        except ValueError as exc:
            sigs.add(signature(exc))
    # This file is neither xensr/ nor fuzz/: no frame of the project.
    assert sigs == {"ValueError in ?"}
    assert signature(Finding("helper hung", "argv")) == "helper hung"
