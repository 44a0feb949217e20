"""Support code shared by the tests: a reference helper parent, a libxc
stream reader, and pytest fixtures (imported by tests/conftest.py)."""
