"""Fixtures of the simulated host's tests."""

from __future__ import annotations

import pytest

from tests.simhost.cbuild import build_driver


@pytest.fixture(scope="session")
def driver(simhost_libs, tmp_path_factory):
    """tests/simhost/driver.c, built against the simulated libraries."""
    return build_driver(simhost_libs, tmp_path_factory.mktemp("driver") / "driver")
