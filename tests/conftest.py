"""pytest configuration shared by all tests.

Shared fixtures live in tests/support/fixtures.py; import them here.
"""

from tests.support.fixtures import *  # noqa: F401,F403
