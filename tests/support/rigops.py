"""Old name of tests/support/simhost.py, kept while tests outside
tests/simhost/ still import it under this name."""

from tests.support.simhost import (  # noqa: F401
    XCFLAGS_DEBUG, XCFLAGS_LIVE, assert_completed, restore_from_file, save_to_file,
)
