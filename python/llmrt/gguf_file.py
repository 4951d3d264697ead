"""A strict, bounds-checked GGUF parser over a read-only memory map.

Every count, length and offset read from the file is checked against the
file size before it is used, so a corrupt or hostile file raises GGUFError
instead of reading out of bounds, allocating without limit or looping for
ever. Tensor data is never copied: each tensor is a numpy view of the map.

(The ``gguf`` package's GGUFReader reads the same format; it builds a numpy
view per scalar and needs ~5 s for a 49k-token vocabulary, where this takes
a fraction of a second. Tests cross-check the two and write models with
``gguf``'s writer.)
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GGUFError

# GGUF metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i", _F32: "<f",
           _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}
_NUMPY = {_U8: "<u1", _I8: "<i1", _U16: "<u2", _I16: "<i2", _U32: "<u4", _I32: "<i4",
          _F32: "<f4", _BOOL: "<u1", _U64: "<u8", _I64: "<i8", _F64: "<f8"}

MAX_DIMS = 4


@dataclass
class TensorInfo:
    name: str
    shape: list[int]       # GGUF order: shape[0] (ne0) is the row length
    type_id: int
    offset: int            # absolute offset of the data in the file
    data: np.ndarray | None = None  # uint8 view, set once the size is known


class GGUFFile:
    """Header, metadata and tensor table of a GGUF file, parsed eagerly."""

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(path)
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size == 0:
                raise self.error("file is empty")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.buf = np.frombuffer(self._mm, dtype=np.uint8)
        self._pos = 0
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    def error(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.name}: {msg}")

    # ---- primitive reads, all bounds-checked ---------------------------------------------
    def _need(self, n: int, what: str) -> None:
        if n < 0 or self._pos + n > self.size:
            raise self.error(f"truncated or corrupt file: {what} at byte {self._pos} needs "
                             f"{n} bytes, file has {self.size}")

    def _scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self._need(n, what)
        (v,) = struct.unpack_from(fmt, self._mm, self._pos)
        self._pos += n
        return v

    def _str(self, what: str) -> str:
        n = self._scalar("<Q", what + " length")
        self._need(n, what)
        raw = self._mm[self._pos:self._pos + n]
        self._pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8") from None

    def _strings(self, count: int, key: str) -> list[str]:
        """count strings in a row (a vocabulary: 262144 for Gemma), each
        bounds-checked as _str does, without a call per string."""
        mm, pos, size = self._mm, self._pos, self.size
        length = struct.Struct("<Q").unpack_from
        out = []
        for i in range(count):
            if pos + 8 > size:
                self._pos = pos
                self._need(8, f"length of element {i} of {key!r}")
            (n,) = length(mm, pos)
            pos += 8
            if n > size - pos:
                self._pos = pos
                self._need(n, f"element {i} of {key!r}")
            raw = mm[pos:pos + n]
            pos += n
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise self.error(f"element {i} of {key!r} is not valid UTF-8") from None
        self._pos = pos
        return out

    def _value(self, vtype: int, key: str, depth: int = 0):
        if vtype in _SCALAR:
            v = self._scalar(_SCALAR[vtype], f"value of {key!r}")
            return bool(v) if vtype == _BOOL else v
        if vtype == _STR:
            return self._str(f"value of {key!r}")
        if vtype == _ARR:
            if depth > 1:
                raise self.error(f"metadata {key!r}: arrays nested too deeply")
            etype = self._scalar("<I", f"array type of {key!r}")
            count = self._scalar("<Q", f"array length of {key!r}")
            if etype in _NUMPY:
                width = np.dtype(_NUMPY[etype]).itemsize
                self._need(count * width, f"array {key!r}")
                arr = np.frombuffer(self._mm, dtype=_NUMPY[etype], count=count, offset=self._pos)
                self._pos += count * width
                return [bool(x) for x in arr] if etype == _BOOL else arr.tolist()
            if etype in (_STR, _ARR):
                # each element takes at least 8 bytes: a larger count cannot fit
                self._need(count * 8, f"array {key!r}")
                if etype == _STR:
                    return self._strings(count, key)
                return [self._value(etype, key, depth + 1) for _ in range(count)]
            raise self.error(f"metadata {key!r}: unknown array element type {etype}")
        raise self.error(f"metadata {key!r}: unknown value type {vtype}")

    # ---- the file ------------------------------------------------------------------------
    def _parse(self) -> None:
        self._need(24, "header")
        if bytes(self._mm[:4]) != b"GGUF":
            raise self.error(f"not a GGUF file (magic {bytes(self._mm[:4])!r}, expected b'GGUF')")
        self._pos = 4
        self.version = self._scalar("<I", "version")
        if self.version not in (2, 3):
            raise self.error(f"unsupported GGUF version {self.version} (llmrt reads 2 and 3)")
        n_tensors = self._scalar("<Q", "tensor count")
        n_kv = self._scalar("<Q", "metadata count")
        # a key/value takes at least 13 bytes and a tensor description 32
        if n_kv * 13 + n_tensors * 32 > self.size - self._pos:
            raise self.error(f"header claims {n_kv} metadata keys and {n_tensors} tensors, more "
                             f"than a {self.size}-byte file can hold (corrupt or truncated)")
        for _ in range(n_kv):
            key = self._str("metadata key")
            if key in self.metadata:
                raise self.error(f"metadata key {key!r} appears twice")
            vtype = self._scalar("<I", f"type of {key!r}")
            self.metadata[key] = self._value(vtype, key)

        infos = []
        for _ in range(n_tensors):
            name = self._str("tensor name")
            n_dims = self._scalar("<I", f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise self.error(f"tensor {name!r} has {n_dims} dimensions")
            shape = [self._scalar("<Q", f"shape of tensor {name!r}") for _ in range(n_dims)]
            if any(d == 0 or d > 1 << 40 for d in shape):
                raise self.error(f"tensor {name!r} has an invalid shape {shape}")
            type_id = self._scalar("<I", f"type of tensor {name!r}")
            offset = self._scalar("<Q", f"offset of tensor {name!r}")
            if name in self.tensors:
                raise self.error(f"tensor {name!r} appears twice")
            info = TensorInfo(name, shape, type_id, offset)
            self.tensors[name] = info
            infos.append(info)

        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1) or align > 1 << 20:
            raise self.error(f"general.alignment={align!r} is not a power of two")
        self.alignment = align
        self.data_start = (self._pos + align - 1) // align * align
        for info in infos:
            if info.offset % align:
                raise self.error(f"tensor {info.name!r} data offset {info.offset} is not "
                                 f"aligned to {align}")
            info.offset += self.data_start

    def release(self, views: list) -> None:
        """Tell the OS these tensor views will not be read again: their pages
        leave the resident set (they are file-backed, so nothing is lost; a
        later read would fault them in again). Views that are not part of this
        map (converted copies) are skipped."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = self.buf.ctypes.data
        page = mmap.PAGESIZE
        for v in views:
            start = v.ctypes.data - base
            if start < 0 or start + v.nbytes > self.size:
                continue
            lo = (start + page - 1) // page * page  # whole pages inside the view
            hi = (start + v.nbytes) // page * page
            if hi > lo:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def tensor_bytes(self, info: TensorInfo, nbytes: int) -> np.ndarray:
        """The nbytes of a tensor's data as a uint8 view, checked against the file."""
        if info.offset + nbytes > self.size:
            raise self.error(f"tensor {info.name!r} extends past the end of the file "
                             f"(needs bytes {info.offset}..{info.offset + nbytes}, file has "
                             f"{self.size}): truncated")
        return self.buf[info.offset:info.offset + nbytes]
