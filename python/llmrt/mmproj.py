"""Reading and validating an mmproj GGUF file: a vision tower and its
projector in llama.cpp's `clip` layout and keys (untrusted input: every key,
shape, type and size is checked before native code sees a pointer)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from .errors import GGUFError, UnsupportedModelError
from .families import PROJECTOR_TENSORS, PROJECTORS, VISION_LAYER_TENSORS, VISION_TENSORS, Projector
from .ggml_types import TYPES
from .gguf_file import GGUFFile
from .gguf_loader import _check_layout, _tensor, _to_f32

ID_BLOCK = 4096          # ids an image may take in a prompt (rows of its embeddings)
MAX_LONGEST_EDGE = 4096  # an image's longest side after the tiling resize (llmrt.images)
# floats of activations a row of the tower may need (6 of its width, its FFN's
# and a patch's pixels): at 8192 rows a pass, 4 GiB
MAX_ROW_FLOATS = 1 << 17


@dataclass
class MMProj:
    """A validated mmproj file: the tower's numbers, its tensors by role."""

    path: str
    projector: Projector
    config: dict[str, float]
    tensors: dict[str, tuple[int, int, int, np.ndarray]]
    image_size: int
    patch: int
    merge: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    longest_edge: int      # idefics3: the resized image's longest side (tiles)
    reader: Any = None     # the GGUFFile: keeps the map open


def _int(meta: dict, path: str, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = meta.get(key, default)
    if v is None:
        raise GGUFError(f"{os.path.basename(path)}: missing metadata key {key!r}")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise GGUFError(f"{os.path.basename(path)}: {key} must be an integer in [{lo}, {hi}], "
                        f"got {v!r}")
    return int(v)


def _triple(meta: dict, path: str, key: str, positive: bool) -> tuple[float, float, float]:
    v = meta.get(key)
    try:
        a = np.asarray(v, np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or (positive and not np.all(a > 0)):
        raise GGUFError(f"{os.path.basename(path)}: {key} must be three finite "
                        f"{'positive ' if positive else ''}numbers, got {v!r}")
    return (float(a[0]), float(a[1]), float(a[2]))


def load_mmproj(path: str | os.PathLike) -> MMProj:
    """Open and validate an mmproj file (untrusted: every key and tensor is
    checked before native code sees a pointer). GGUFError on a bad file,
    UnsupportedModelError on a projector llmrt does not run."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mmproj file not found: {path!r}")
    f = GGUFFile(path)
    meta, name = f.metadata, os.path.basename(path)
    if meta.get("general.architecture") != "clip":
        raise GGUFError(f"{name}: not an mmproj file (general.architecture is "
                        f"{meta.get('general.architecture')!r}, expected 'clip')")
    if meta.get("clip.has_vision_encoder") is not True:
        raise UnsupportedModelError(f"{name}: the file has no vision encoder")
    kind = meta.get("clip.projector_type")
    if kind not in PROJECTORS:
        raise UnsupportedModelError(f"{name}: projector type {kind!r} is not supported "
                                    f"(supported: {', '.join(PROJECTORS)})")
    proj = PROJECTORS[kind]
    if meta.get("clip.use_gelu") is not True or meta.get("clip.use_silu"):
        raise UnsupportedModelError(f"{name}: only the GELU vision tower is supported")
    S = _int(meta, path, "clip.vision.image_size", 2, 4096)
    p = _int(meta, path, "clip.vision.patch_size", 1, 64)
    D = _int(meta, path, "clip.vision.embedding_length", 1, 1 << 14)
    F = _int(meta, path, "clip.vision.feed_forward_length", 1, 1 << 16)
    L = _int(meta, path, "clip.vision.block_count", 1, 256)
    H = _int(meta, path, "clip.vision.attention.head_count", 1, 256)
    out = _int(meta, path, "clip.vision.projection_dim", 1, 1 << 17)
    merge = _int(meta, path, "clip.vision.projector.scale_factor", 1, 64,
                 proj.default_merge or None)
    eps = meta.get("clip.vision.attention.layer_norm_epsilon")
    if isinstance(eps, bool) or not isinstance(eps, (float, int)) or not 0 < eps < 1:
        raise GGUFError(f"{name}: clip.vision.attention.layer_norm_epsilon must be in (0, 1)")
    G = S // p
    if S % p or G % merge or D % H or G * G > 8192 or (not proj.pool and merge < 2):
        raise GGUFError(f"{name}: image size {S}, patch {p}, scale factor {merge} and "
                        f"{H} heads of width {D} do not fit together")
    P = G * G
    tokens = P // (merge * merge)  # an image's (or a tile's) rows in a prompt
    if proj.tiles:  # the most tiles an image may give, and its global view
        longest = _int(meta, path, "clip.vision.preproc_image_size", S, 1 << 14, S)
        side = -(-min(longest, MAX_LONGEST_EDGE) // S)
        tokens *= side * side + 1
    if tokens > ID_BLOCK or (proj.bidirectional and tokens > _core.PASS_ROWS):
        raise UnsupportedModelError(
            f"{name}: an image of up to {tokens} tokens (at most "
            f"{_core.PASS_ROWS if proj.bidirectional else ID_BLOCK})")
    if 6 * D + F + 3 * p * p > MAX_ROW_FLOATS:
        raise GGUFError(f"{name}: a tower of width {D} and FFN {F} needs more activation "
                        f"memory than llmrt allows")
    proj_in = D if proj.pool else D * merge * merge
    dims = (D, F, p, P, proj_in, out)
    specs = [(r, g, sh(*dims)) for r, g, sh, _ in VISION_TENSORS]
    for i in range(L):
        specs += [(f"blk.{i}.{r}", f"v.blk.{i}.{g}", sh(*dims)) for r, g, sh in
                  VISION_LAYER_TENSORS]
    specs += [(r, g, sh(*dims)) for r, g, sh in PROJECTOR_TENSORS[kind]]
    tensors: dict[str, tuple[int, int, int, np.ndarray]] = {}
    for role, gname, shape in specs:
        t = f.tensors.get(gname)
        if t is None:
            raise GGUFError(f"{name}: missing tensor {gname!r}")
        tensors[role] = _tensor(f, t, shape)
    _check_layout(f)
    _reshape(tensors, name, D, p, P, proj_in, out)
    longest = _int(meta, path, "clip.vision.preproc_image_size", S, 1 << 14, S) \
        if proj.tiles else S
    return MMProj(path, proj, {
        "n_embd": D, "n_ff": F, "n_layer": L, "n_head": H, "patch_dim": 3 * p * p,
        "n_patches": P, "eps": float(eps), "proj_in": proj_in, "proj_out": out,
        "proj_norm": float(proj.norm), "proj_eps": float(eps)}, tensors, S, p, merge,
        _triple(meta, path, "clip.vision.image_mean", False),
        _triple(meta, path, "clip.vision.image_std", True), longest, f)


def _f32(t: tuple[int, int, int, np.ndarray]) -> np.ndarray:
    """A tensor's values as float32 (rows, cols)."""
    type_id, rows, cols, buf = t
    return _to_f32(buf, type_id, rows * cols).reshape(rows, cols)


def _reshape(tensors: dict, name: str, D: int, p: int, P: int, proj_in: int, out: int) -> None:
    """The native tower's views: the patch kernel as a (D, 3 p^2) matrix, the
    position table float32 (P, D), gemma 3's projection transposed to (text,
    vision); every value finite."""
    type_id, _, _, buf = tensors["patch"]
    if TYPES["F32"].id != type_id and TYPES["F16"].id != type_id:
        raise UnsupportedModelError(f"{name}: v.patch_embd.weight must be F32 or F16")
    tensors["patch"] = (type_id, D, 3 * p * p, buf)
    for role in ("patch", "pos", "proj_t", "proj", "proj_norm"):
        if role in tensors and not np.all(np.isfinite(_f32(tensors[role]))):
            raise GGUFError(f"{name}: tensor {role} contains non-finite values")
    f32 = TYPES["F32"].id
    pos = _f32(tensors["pos"])  # (P, D)
    tensors["pos"] = (f32, P, D, np.ascontiguousarray(pos).view(np.uint8))
    if "proj_t" in tensors:  # stored (vision, text): y = x @ W
        w = np.ascontiguousarray(_f32(tensors.pop("proj_t")).T)  # (text, vision)
        tensors["proj"] = (f32, out, proj_in, w.view(np.uint8))
