"""xensr's code generator: one message table, one emitter per output.

``python -m codegen`` writes the outputs into the project tree;
``python -m codegen --check`` exits 1 when any output is missing, stale or
was edited by hand.
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
