"""GGUF tensor types: the one table llmrt's Python side uses.

The types llmrt runs come from the native core (csrc/core/dtype.h, read
through ``_core.ggml_types()``): name, ggml_type id, weights per block and
bytes per block. The types ``llmrt quantize`` / ``llmrt convert`` write are a
subset, under lower-case names, with the ``general.file_type`` value llama.cpp
records for a file mostly of that type.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _core


@dataclass(frozen=True)
class GGMLType:
    name: str    # GGUF's name, e.g. "Q4_K"
    id: int      # ggml_type id as stored in the file
    block: int   # weights per block
    nbytes: int  # bytes per block

    def row_bytes(self, cols: int) -> int:
        return cols // self.block * self.nbytes


TYPES: dict[str, GGMLType] = {name: GGMLType(name, int(i), int(b), int(nb))
                              for name, i, b, nb in _core.ggml_types()}
BY_ID: dict[int, GGMLType] = {t.id: t for t in TYPES.values()}

# name -> general.file_type ("mostly this type"), for the types llmrt writes
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_k": 15, "q6_k": 18,
              "bf16": 32, "mxfp4": 38}  # mxfp4: a mixture of experts' experts (the rest q8_0)
WRITABLE = tuple(FILE_TYPES)


def writable(name: str) -> GGMLType:
    """The type llmrt quantize / convert write under a lower-case name."""
    if name not in FILE_TYPES:
        raise ValueError(f"unknown type {name!r}: --type must be one of {', '.join(WRITABLE)}")
    return TYPES[name.upper()]


def name_of(type_id: int) -> str:
    """A readable name for any ggml_type id (ones llmrt does not run too)."""
    if type_id in BY_ID:
        return BY_ID[type_id].name
    try:
        import gguf
        return gguf.GGMLQuantizationType(type_id).name
    except Exception:  # noqa: BLE001 - an id no one knows
        return f"#{type_id}"
