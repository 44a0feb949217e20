"""xensr's code generator: one message table, one emitter per output.

The table (``table.py``, checked by ``model.py``) owns every protocol fact:
message numbers, directions, argument types, and how the parent handles
each message (role, reply mapping, failure and default replies, the
cbflags always installed, how a callback gets its arguments).  Changing or
adding a message means editing the table and regenerating, nothing else.

* ``emit_c``: ``helper_c/xensr_msgs.[ch]``, the helper's senders and libxc
  stubs (they include the fixed ``helper_c/frame.c``);
* ``emit_cython``: ``xensr/_msgs.pxi``, the callout's enums, per-type
  arrays, checks and decoders (it includes the fixed ``xensr/_wire.pxi``);
* ``emit_py``: ``xensr/_constants.py``, the numbers and maps the Python API
  reads.

An emitter writes only what depends on the table.  ``python -m codegen``
writes the outputs into the project tree; ``python -m codegen --check``
exits 1 when any output is missing, stale or was edited by hand.
"""

from __future__ import annotations

from typing import List

from . import emit_c, emit_cython, emit_py
from .model import Table
from .output import GeneratedFile
from .table import TABLE

EMITTERS = (emit_c.emit, emit_cython.emit, emit_py.emit)


def generate(table: Table = TABLE) -> List[GeneratedFile]:
    files: List[GeneratedFile] = []
    for emitter in EMITTERS:
        files.extend(emitter(table))
    return files
