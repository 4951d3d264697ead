"""Reading and validating GGUF files.

The file is untrusted input. Before any pointer reaches native code, this
module checks the header counts against the file size, the architecture and
hyperparameters, and every tensor's name, type, shape, byte size and extent.
Weights stay in the file's memory map: numpy views, no copies (only the small
1-D norm and bias vectors are converted to float32 when stored otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GGUFError, UnsupportedModelError
from .families import FAMILIES, expected_tensors
from .ggml_types import BY_ID, TYPES, name_of
from .gguf_file import GGUFFile, TensorInfo

# Sanity bounds on hyperparameters; a file outside them is corrupt or hostile.
_LIMITS = {
    "n_vocab": 1 << 22,
    "n_embd": 1 << 17,
    "n_layer": 4096,
    "n_head": 4096,
    "n_ff": 1 << 20,
    "n_ctx": 1 << 24,
}


@dataclass
class LoadedGGUF:
    """A validated GGUF model: hyperparameters, tensors and metadata."""

    path: str
    arch: str
    config: dict[str, Any]
    # GGUF name -> (type id, rows, cols, uint8 view of the bytes)
    tensors: dict[str, tuple[int, int, int, np.ndarray]]
    metadata: dict[str, Any]
    tensor_types: dict[str, str] = field(default_factory=dict)
    # the native model's role of each tensor present -> its GGUF name
    roles: dict[str, str] = field(default_factory=dict)
    reader: Any = None  # the GGUFFile; keeps the memory map open


def _err(path: str, msg: str) -> GGUFError:
    return GGUFError(f"{os.path.basename(path)}: {msg}")


def _get(meta: dict, path: str, key: str, kind: type, default: Any = None, required: bool = True):
    if key not in meta:
        if required and default is None:
            raise _err(path, f"missing metadata key {key!r}")
        return default
    v = meta[key]
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise _err(path, f"metadata key {key!r} should be an integer, got {type(v).__name__}")
        return int(v)
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise _err(path, f"metadata key {key!r} should be a number, got {type(v).__name__}")
        v = float(v)
        if not np.isfinite(v):
            raise _err(path, f"metadata key {key!r} is not finite")
        return v
    if kind is str:
        if not isinstance(v, str):
            raise _err(path, f"metadata key {key!r} should be a string")
        return v
    return v


def _bounded(meta: dict, path: str, key: str, default: float, lo: float, hi: float) -> float:
    """A float key within [lo, hi] (finite, and so representable in float32)."""
    v = _get(meta, path, key, float, default=default, required=False)
    if not lo <= v <= hi:
        raise _err(path, f"metadata key {key!r}={v} is out of range [{lo:g}, {hi:g}]")
    return v


def _config(meta: dict, path: str, arch: str, n_vocab_tensor: int,
            longrope: bool = False) -> dict[str, Any]:
    """The hyperparameters the C++ model takes, from the file's keys, each
    checked against its range."""
    a = arch
    cfg = _sizes(meta, path, a, n_vocab_tensor)
    _rope(meta, path, a, cfg, longrope)
    key = f"{a}.attention.sliding_window"
    window = _get(meta, path, key, int, default=0, required=False)
    if window < 0:
        raise _err(path, f"{key}={window} must not be negative")
    if window >= cfg["n_ctx_train"]:
        window = 0  # no query sees further back than the context: no window
    if FAMILIES[arch].gemma:
        _gemma_config(meta, path, arch, cfg, window, key in meta)
    elif window:
        # phi3, mistral: every layer attends over the window; gpt-oss: every
        # other layer (the family's period, or the file's pattern)
        period = FAMILIES[arch].swa_period
        pat = meta.get(f"{a}.attention.sliding_window_pattern")
        if pat is not None:
            period = sliding_pattern(pat, cfg["n_layer"], os.path.basename(path), a)
        cfg["sliding_window"], cfg["swa_pattern"] = window, period
    # Mixture of experts (Mixtral): experts per layer and per token
    cfg["n_expert"] = _get(meta, path, f"{a}.expert_count", int, default=0, required=False)
    cfg["n_expert_used"] = _get(meta, path, f"{a}.expert_used_count", int, default=0,
                                required=False)
    if cfg["n_expert"]:
        _experts(meta, path, arch, cfg)
    if FAMILIES[arch].swiglu_limit:
        cfg["swiglu_limit"] = FAMILIES[arch].swiglu_limit
        cfg["swiglu_alpha"] = FAMILIES[arch].swiglu_alpha
    # GGUF stores llama's q/k rows permuted for rotation of adjacent pairs;
    # qwen2 / qwen3 keep the Hugging Face order, which rotates (i, i + n_rot/2).
    cfg["rope_neox"] = FAMILIES[arch].rope_neox
    return cfg


def _experts(meta: dict, path: str, a: str, cfg: dict) -> None:
    """A mixture of experts' counts, widths and weighting, checked."""
    fam = FAMILIES[a]
    if not 0 < cfg["n_expert"] <= 256 or not 0 < cfg["n_expert_used"] <= cfg["n_expert"]:
        raise _err(path, f"expert counts out of range: {cfg['n_expert_used']} used of "
                         f"{cfg['n_expert']}")
    cfg["n_ff_exp"] = _get(meta, path, f"{a}.expert_feed_forward_length", int,
                           default=cfg["n_ff"])
    cfg["n_ff_shexp"] = _get(meta, path, f"{a}.expert_shared_feed_forward_length", int,
                             default=cfg["n_ff"]) if fam.shared_expert else 0
    for k in ("n_ff_exp", "n_ff_shexp"):
        if not 0 <= cfg[k] <= _LIMITS["n_ff"] or (k == "n_ff_exp" and not cfg[k]):
            raise _err(path, f"hyperparameter {k}={cfg[k]} is out of range")
    norm = meta.get(f"{a}.expert_weights_norm", fam.expert_norm)
    if not isinstance(norm, (bool, np.bool_)):
        raise _err(path, f"metadata key {a}.expert_weights_norm should be a bool")
    cfg["expert_norm"] = bool(norm)


def _sizes(meta: dict, path: str, a: str, n_vocab_tensor: int) -> dict[str, Any]:
    """Widths, depths, heads, vocabulary and context, checked."""
    n_embd = _get(meta, path, f"{a}.embedding_length", int)
    n_head = _get(meta, path, f"{a}.attention.head_count", int)
    cfg = {
        "n_embd": n_embd,
        "n_layer": _get(meta, path, f"{a}.block_count", int),
        "n_ff": _get(meta, path, f"{a}.feed_forward_length", int),
        "n_head": n_head,
        "n_head_kv": _get(meta, path, f"{a}.attention.head_count_kv", int, default=n_head),
        "n_ctx_train": _get(meta, path, f"{a}.context_length", int, default=2048),
        "rms_eps": _get(meta, path, f"{a}.attention.layer_norm_rms_epsilon", float, default=1e-5),
        "rope_freq_base": _get(meta, path, f"{a}.rope.freq_base", float, default=10000.0),
    }
    n_vocab = _get(meta, path, f"{a}.vocab_size", int, default=n_vocab_tensor)
    if n_vocab != n_vocab_tensor:
        raise _err(path, f"{a}.vocab_size is {n_vocab} but token_embd.weight has {n_vocab_tensor} rows")
    cfg["n_vocab"] = n_vocab
    for k in ("n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "n_vocab"):
        if not 0 < cfg[k] <= _LIMITS.get(k, _LIMITS["n_head"]):
            raise _err(path, f"hyperparameter {k}={cfg[k]} is out of range")
    if not 0 < cfg["n_ctx_train"] <= _LIMITS["n_ctx"]:
        raise _err(path, f"{a}.context_length={cfg['n_ctx_train']} is out of range")
    if cfg["n_head"] % cfg["n_head_kv"]:
        raise _err(path, f"head_count {n_head} is not a multiple of head_count_kv {cfg['n_head_kv']}")
    if n_embd % n_head and f"{a}.attention.key_length" not in meta:
        raise _err(path, f"embedding_length {n_embd} is not divisible by head_count {n_head}")
    head_dim = _get(meta, path, f"{a}.attention.key_length", int, default=n_embd // n_head)
    v_dim = _get(meta, path, f"{a}.attention.value_length", int, default=head_dim)
    if head_dim <= 0 or head_dim > 1024 or v_dim != head_dim:
        raise _err(path, f"unsupported head sizes: key_length {head_dim}, value_length {v_dim}")
    cfg["head_dim"] = head_dim
    n_rot = _get(meta, path, f"{a}.rope.dimension_count", int, default=head_dim)
    if n_rot <= 0 or n_rot > head_dim or n_rot % 2:
        raise _err(path, f"{a}.rope.dimension_count={n_rot} must be even and at most {head_dim}")
    cfg["n_rot"] = n_rot
    return cfg


def _rope(meta: dict, path: str, a: str, cfg: dict, longrope: bool) -> None:
    """RoPE's base, scaling and LongRoPE's original context and attention
    factor (and the norm epsilon), checked."""
    if not cfg["rms_eps"] > 0 or not cfg["rope_freq_base"] > 0:
        raise _err(path, "rms epsilon and rope freq_base must be positive")
    if not cfg["rope_freq_base"] <= 1e12 or not cfg["rms_eps"] <= 1.0:
        raise _err(path, "rms epsilon or rope freq_base is out of range")
    scaling = meta.get(f"{a}.rope.scaling.type", "none")
    factor = _get(meta, path, f"{a}.rope.scaling.factor", float, default=1.0, required=False)
    cfg["rope_pos_scale"] = 1.0
    if scaling in ("none", "") or factor in (0.0, 1.0):
        scaling = "none"
    elif scaling in ("linear", "yarn"):
        if not 0 < factor <= 1e6:
            raise _err(path, f"{a}.rope.scaling.factor={factor} is out of range")
        if scaling == "linear":
            cfg["rope_pos_scale"] = 1.0 / factor
    else:
        raise UnsupportedModelError(
            f"{os.path.basename(path)}: RoPE scaling type {scaling!r} is not supported "
            "(linear and yarn are)")
    # phi3's LongRoPE: the original context (the short factors' one) and the
    # attention factor that scales cos and sin; the factors are tensors
    orig = _get(meta, path, f"{a}.rope.scaling.original_context_length", int, default=0,
                required=False)
    if orig < 0 or orig > _LIMITS["n_ctx"]:
        raise _err(path, f"{a}.rope.scaling.original_context_length={orig} is out of range")
    cfg["rope_orig_ctx"] = orig or cfg["n_ctx_train"]
    ratio = cfg["n_ctx_train"] / cfg["rope_orig_ctx"]
    dflt = 1.0  # without LongRoPE's factors, no attention factor unless the file says one
    if longrope and ratio > 1 and cfg["rope_orig_ctx"] >= 2:
        dflt = float(np.sqrt(1 + np.log(ratio) / np.log(cfg["rope_orig_ctx"])))
    cfg["rope_mscale"] = _bounded(meta, path, f"{a}.rope.scaling.attn_factor", dflt, 1e-3, 1e3)
    if scaling == "yarn":
        _yarn(meta, path, a, cfg, factor)


def _yarn(meta: dict, path: str, a: str, cfg: dict, factor: float) -> None:
    """YaRN as RoPE frequency divisors and a cos / sin scale: each
    frequency blends its interpolated (divided by the factor) and its
    original value by a linear ramp over the dimensions between the
    beta_fast and beta_slow rotations in the original context; cos and sin
    are scaled by 0.1 ln(factor) + 1 (times the file's yarn_attn_factor)."""
    orig = cfg["rope_orig_ctx"]
    fast = _bounded(meta, path, f"{a}.rope.scaling.yarn_beta_fast", 32.0, 1e-3, 1e4)
    slow = _bounded(meta, path, f"{a}.rope.scaling.yarn_beta_slow", 1.0, 1e-3, 1e4)
    attn = _bounded(meta, path, f"{a}.rope.scaling.yarn_attn_factor", 1.0, 1e-3, 1e3)
    dim, base = cfg["n_rot"], cfg["rope_freq_base"]
    if not base > 1.0:
        raise _err(path, f"{a}.rope.freq_base={base} must be above 1 for YaRN")

    def corr(rot: float) -> float:  # the dimension that turns `rot` times over orig
        return dim * np.log(orig / (rot * 2 * np.pi)) / (2 * np.log(base))
    lo, hi = corr(fast), corr(slow)
    if FAMILIES[a].yarn_truncate:
        lo, hi = np.floor(lo), np.ceil(hi)
    lo, hi = max(lo, 0.0), min(hi, dim - 1.0)
    if hi == lo:
        hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    extrap = 1.0 - ramp  # 1: the original frequency, 0: the interpolated one
    keep = (1.0 - extrap) / factor + extrap  # inv_freq multiplier
    div = (1.0 / keep).astype(np.float32)
    if not np.all(np.isfinite(div) & (div > 0)):
        raise _err(path, "YaRN settings give non-finite RoPE frequencies")
    cfg["rope_yarn_divisors"] = div
    cfg["rope_mscale"] = float((0.1 * np.log(factor) + 1.0) * attn)


def _gemma_config(meta: dict, path: str, a: str, cfg: dict, window: int,
                  window_given: bool) -> None:
    """Gemma 2 / 3: embeddings scaled by sqrt(n_embd), GeGLU, soft-capping
    (gemma 2), the query scale, sliding-window layers alternating with
    global ones, and (gemma 3) another RoPE base for the sliding layers."""
    name = os.path.basename(path)
    gemma2 = FAMILIES[a].gemma2
    cfg["embd_scale"] = float(np.sqrt(cfg["n_embd"]))
    cfg["ffn_gelu"] = 1
    # gemma 2 files written before the keys existed had these values
    for key, k, dflt in (("attn_softcap", f"{a}.attn_logit_softcapping", 50.0 if gemma2 else 0.0),
                         ("final_softcap", f"{a}.final_logit_softcapping", 30.0 if gemma2 else 0.0)):
        cfg[key] = _bounded(meta, path, k, dflt, 0.0, 1e4)
    # the query scale: 1 / sqrt(query_pre_attn_scalar). The file may say it;
    # otherwise the published models' rule: 1 / sqrt(n_embd / n_head) for
    # the 27B ones (46 and 62 layers), 1 / sqrt(head_dim) for the others
    scale = _bounded(meta, path, f"{a}.attention.scale", 0.0, 0.0, 1e3)
    if not scale and cfg["n_layer"] == (46 if gemma2 else 62):
        scale = 1.0 / float(np.sqrt(cfg["n_embd"] // cfg["n_head"]))
    cfg["attn_scale"] = scale
    if not window_given and gemma2:  # gemma 2 files from before the key: 4096
        window = 4096 if 4096 < cfg["n_ctx_train"] else 0
    cfg["sliding_window"] = window
    pat = meta.get(f"{a}.attention.sliding_window_pattern", 2 if gemma2 else 6)
    cfg["swa_pattern"] = sliding_pattern(pat, cfg["n_layer"], name, a)
    cfg["rope_freq_base_swa"] = _bounded(meta, path, f"{a}.rope.freq_base_swa",
                                         cfg["rope_freq_base"] if gemma2 else 10000.0, 1.0, 1e12)
    # gemma 3's RoPE scaling (4B and up) is its global layers' only
    cfg["rope_pos_scale_swa"] = cfg["rope_pos_scale"] if gemma2 else 1.0


def sliding_period(flags: list[bool]) -> int | None:
    """Per-layer sliding flags -> the period P of llmrt's rule (layer l slides
    unless (l + 1) % P == 0; 0: every layer; 1: none), or None when the flags
    follow no such period. The first global layer fixes P."""
    if all(flags):
        return 0
    p = flags.index(False) + 1
    return p if flags == [(l + 1) % p != 0 for l in range(len(flags))] else None


def sliding_pattern(pat: Any, n_layer: int, name: str, a: str) -> int:
    """The period P of the sliding layers (layer l slides unless (l + 1) % P
    == 0; 0: every layer) from an integer or a per-layer list of flags."""
    key = f"{a}.attention.sliding_window_pattern"
    if isinstance(pat, (int, np.integer)) and not isinstance(pat, bool):
        if not 0 <= int(pat) <= 4096:
            raise GGUFError(f"{name}: {key}={pat} is out of range")
        return int(pat)
    if isinstance(pat, (list, tuple, np.ndarray)) and len(pat) == n_layer and \
            all(isinstance(x, (bool, np.bool_, int, np.integer)) and x in (0, 1) for x in pat):
        p = sliding_period([bool(x) for x in pat])
        if p is not None:
            return p
        raise UnsupportedModelError(f"{name}: {key}: sliding layers in an irregular pattern "
                                    "are not supported")
    raise GGUFError(f"{name}: {key} should be an integer or one flag a layer")


def load_gguf(path: str | os.PathLike) -> LoadedGGUF:
    """Open, validate and map a GGUF model. Raises GGUFError on any problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path!r}")
    f = GGUFFile(path)
    meta = f.metadata

    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise _err(path, "missing metadata key 'general.architecture'")
    if arch not in FAMILIES:
        raise UnsupportedModelError(
            f"{os.path.basename(path)}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(FAMILIES)})")

    emb = f.tensors.get("token_embd.weight")
    if emb is None:
        raise _err(path, "missing tensor 'token_embd.weight'")
    if len(emb.shape) != 2:
        raise _err(path, "tensor 'token_embd.weight' must be 2-D")
    cfg = _config(meta, path, arch, emb.shape[1], "rope_factors_long.weight" in f.tensors)

    expected = expected_tensors(FAMILIES[arch], cfg, "rope_factors_long.weight" in f.tensors)

    tensors: dict[str, tuple[int, int, int, np.ndarray]] = {}
    types: dict[str, str] = {}
    roles: dict[str, str] = {}
    for name, e in expected.items():
        t = f.tensors.get(name)
        if t is None:
            if e.required:
                raise _err(path, f"missing tensor {name!r}")
            continue
        tensors[name] = _tensor(f, t, e.shape)
        types[name] = BY_ID[t.type_id].name
        roles[e.role] = name
        if name.startswith("rope_f"):  # RoPE frequency divisors: a zero would give inf
            v = tensors[name][3].view(np.float32)
            if not np.all(v > 0):
                raise _err(path, f"tensor {name!r} must hold positive values")
    _check_layout(f)
    yarn = cfg.pop("rope_yarn_divisors", None)
    if yarn is not None:  # YaRN: its divisors are the frequency factors
        if "rope_freqs" in roles or "rope_factors_long" in roles:
            raise _err(path, "YaRN scaling and RoPE factor tensors together")
        roles["rope_freqs"] = "(yarn) rope_freqs"
        tensors["(yarn) rope_freqs"] = (TYPES["F32"].id, 1, len(yarn), yarn.view(np.uint8))
    return LoadedGGUF(path=path, arch=arch, config=cfg, tensors=tensors, metadata=meta,
                      tensor_types=types, roles=roles, reader=f)


def _check_layout(f: GGUFFile) -> None:
    """Tensors lie end to end as writers put them (each padded to the
    alignment): a tensor whose type or shape does not match the bytes it was
    written as overlaps the next one or leaves a gap before it."""
    spans = []
    for t in f.tensors.values():
        gt = BY_ID.get(t.type_id)
        if gt is None or not t.shape or t.shape[0] % gt.block:
            continue
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        spans.append((t.offset, t.offset + rows * gt.row_bytes(int(t.shape[0])), t.name))
    spans.sort()
    pad = f.alignment
    for (start, end, name), (nxt, _, other) in zip(spans, spans[1:]):
        if end > nxt or nxt - end >= pad:
            raise _err(f.path, f"tensor {name!r} ({end - start} bytes for its type and shape) "
                               f"does not fill the space before tensor {other!r} "
                               f"({nxt - start} bytes): its type or shape does not match its data")


def _tensor(f: GGUFFile, t: TensorInfo, shape: list[int]):
    path, name, type_id = f.path, t.name, t.type_id
    got = list(t.shape)
    # GGUF may pad a shape with trailing 1s.
    while len(got) > len(shape) and got[-1] == 1:
        got.pop()
    if got != shape:
        raise _err(path, f"tensor {name!r} has shape {got}, expected {shape}")
    gt = BY_ID.get(type_id)
    if gt is None:
        raise UnsupportedModelError(
            f"{os.path.basename(path)}: tensor {name!r} has type {name_of(type_id)}, which "
            f"llmrt does not support (supported: {', '.join(TYPES)})")
    cols = shape[0]
    rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1  # 3-D: the experts' rows end to end
    if cols % gt.block:
        raise _err(path, f"tensor {name!r}: row length {cols} is not a multiple of the "
                         f"{gt.name} block size {gt.block}")
    nbytes = rows * gt.row_bytes(cols)
    buf = f.tensor_bytes(t, nbytes)
    if len(shape) == 1 or name.endswith(".bias"):
        # Small vectors (norms, biases; the experts' biases by expert): the
        # native side takes float32.
        vec = _to_f32(buf, type_id, cols * rows)
        if not np.all(np.isfinite(vec)):
            raise _err(path, f"tensor {name!r} contains non-finite values")
        return (TYPES["F32"].id, rows, cols, vec.view(np.uint8))
    return (type_id, rows, cols, buf)


def _to_f32(buf: np.ndarray, type_id: int, n: int) -> np.ndarray:
    if type_id == 0:
        return np.ascontiguousarray(buf.view(np.float32))
    if type_id == 1:
        return buf.view(np.float16).astype(np.float32)
    if type_id == 30:
        return (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    from . import _core
    return _core.dequantize(type_id, buf, 1, n).reshape(-1)
