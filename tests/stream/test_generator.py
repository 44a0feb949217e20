"""The test stream generator (gen.py), checked against Debian's
verify-stream-v2 and against itself."""

from __future__ import annotations

import struct

import pytest

from tests.stream.gen import PAGE_DATA, make

# --------------------------------------------------------------------------
# Debian's verifier (the verify_stream fixture skips when it is not unpacked)


@pytest.mark.debian
@pytest.mark.parametrize("fmt", ["xl", "libxl", "libxc"])
@pytest.mark.parametrize("hvm", [True, False], ids=["hvm", "pv"])
def test_generator_streams_pass_debian_verifier(tmp_path, verify_stream, fmt, hvm):
    g = make(fmt, hvm=hvm)
    p = tmp_path / "s"
    p.write_bytes(g.data)
    res = verify_stream(p, fmt)
    assert res.returncode == 0, res.stdout + res.stderr
    # The verifier really read the records (it summarises them with -v).
    assert "Page data" in res.stdout or "Squashed" in res.stdout
    assert "End" in res.stdout


@pytest.mark.debian
def test_debian_verifier_rejects_broken_generator_stream(tmp_path, verify_stream):
    """The verifier is a real check: a bad PAGE_DATA length fails it."""
    g = make("libxc", hvm=True)
    data = bytearray(g.data)
    # Find the first PAGE_DATA record and corrupt its count.
    off = g.boundaries[0] + 40  # headers
    while struct.unpack_from("<I", data, off)[0] != PAGE_DATA:
        off += 8 + struct.unpack_from("<I", data, off + 4)[0]
        off += (8 - off % 8) % 8
    struct.pack_into("<I", data, off + 8, 3)
    p = tmp_path / "s"
    p.write_bytes(bytes(data))
    res = verify_stream(p, "libxc")
    assert res.returncode != 0


def test_generator_is_self_consistent():
    g = make("xl", hvm=False, npages=30)
    assert g.boundaries == sorted(g.boundaries)
    assert g.boundaries[-1] == len(g.data)
    # every record boundary after the xl header is 8-aligned relative to it
    assert all((b - g.boundaries[1]) % 8 == 0 for b in g.boundaries[1:])
    assert g.pages == 30 + len(range(30)[1::3])
    assert len(g.distinct) == 30
