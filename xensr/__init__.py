"""xensr: save, restore and migrate Xen domains from Python without blocking."""

import logging as _logging
from typing import TYPE_CHECKING, Any, List

# A library's records reach the application's handlers or nowhere: without
# this, Python's last-resort handler prints the helper's errors to stderr in
# programs that never configured logging.
_logging.getLogger("xensr").addHandler(_logging.NullHandler())

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"  # the one version: pyproject.toml and setup.py read it

# The Xen release ("4.17", "4.20", ...) this build is for; None unbuilt.
from ._xenlibs import XEN_VERSION  # noqa: E402

from ._constants import (  # noqa: E402
    XC_STREAM_COLO,
    XC_STREAM_PLAIN,
    XC_STREAM_REMUS,
    XGR_CHECKPOINT_ERROR,
    XGR_CHECKPOINT_FAILOVER,
    XGR_CHECKPOINT_SUCCESS,
    XGR_SDD_MISSING_CPUID,
    XGR_SDD_MISSING_MSR,
    XGS_POLICY_ABORT,
    XGS_POLICY_CONTINUE_PRECOPY,
    XGS_POLICY_STOP_AND_COPY,
)
# The API needs the compiled callout (xensr._xc); it is imported on first
# use so that xensr.errors, xensr.testing, xensr.xlfile and the CLI's file
# commands work without it.
_API_NAMES = (
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_KILL_GRACE",
    "EVENT_READ",
    "EVENT_WRITE",
    "Operation",
    "OperationResult",
    "RestoreOperation",
    "RestoreResult",
    "SaveOperation",
    "SaveResult",
    "helper_path",
    "resolve_helper",
    "restore_domain",
    "save_domain",
)

if TYPE_CHECKING:  # pragma: no cover
    from .api import (
        DEFAULT_FRAME_TIMEOUT,
        DEFAULT_KILL_GRACE,
        EVENT_READ,
        EVENT_WRITE,
        Operation,
        OperationResult,
        RestoreOperation,
        RestoreResult,
        SaveOperation,
        SaveResult,
        helper_path,
        resolve_helper,
        restore_domain,
        save_domain,
    )
    from .xlfile import restore_domain_from_file, save_domain_to_file


# xl save files: one call each (xensr.xlfile), also loaded on first use.
_XLFILE_NAMES = ("save_domain_to_file", "restore_domain_from_file")


def __getattr__(name: str) -> Any:
    if name in _API_NAMES or name in _XLFILE_NAMES:
        from . import api, xlfile

        value = getattr(api if name in _API_NAMES else xlfile, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xensr' has no attribute {name!r}")


def __dir__() -> List[str]:
    # The lazily loaded names too: dir(), help() and completion show them.
    return sorted(set(globals()) | set(_API_NAMES) | set(_XLFILE_NAMES))


from .callbacks import (  # noqa: E402
    DEFERRED,
    Callbacks,
    CheckpointResult,
    PrecopyDecision,
    PrecopyStats,
)

__all__ = [
    "__version__",
    "XEN_VERSION",
    *_errors_all,
    "save_domain",
    "restore_domain",
    "save_domain_to_file",
    "restore_domain_from_file",
    "Operation",
    "SaveOperation",
    "RestoreOperation",
    "OperationResult",
    "SaveResult",
    "RestoreResult",
    "EVENT_READ",
    "EVENT_WRITE",
    "DEFAULT_KILL_GRACE",
    "DEFAULT_FRAME_TIMEOUT",
    "helper_path",
    "resolve_helper",
    "Callbacks",
    "PrecopyStats",
    "PrecopyDecision",
    "CheckpointResult",
    "DEFERRED",
    "XC_STREAM_PLAIN",
    "XC_STREAM_REMUS",
    "XC_STREAM_COLO",
    "XGS_POLICY_ABORT",
    "XGS_POLICY_CONTINUE_PRECOPY",
    "XGS_POLICY_STOP_AND_COPY",
    "XGR_CHECKPOINT_ERROR",
    "XGR_CHECKPOINT_SUCCESS",
    "XGR_CHECKPOINT_FAILOVER",
    "XGR_SDD_MISSING_CPUID",
    "XGR_SDD_MISSING_MSR",
]
