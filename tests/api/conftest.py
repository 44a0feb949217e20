"""Fixtures of the API tests: each helper, a simulated host, a stream file."""

from __future__ import annotations

import os

import pytest

import xensr


@pytest.fixture(params=["xensr", "debian"])
def helper(request, simhost_libs):
    """xensr's helper, then Debian's (skipped where it is not unpacked)."""
    if request.param == "xensr":
        return xensr.helper_path()
    return str(request.getfixturevalue("debian_helper"))


@pytest.fixture
def host(simulated_host):
    return simulated_host


@pytest.fixture
def stream(tmp_path):
    """An fd on an empty file for the migration stream."""
    fd = os.open(tmp_path / "stream", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    yield fd
    os.close(fd)
