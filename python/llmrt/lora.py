"""LoRA adapters: a PEFT directory (adapter_config.json and
adapter_model.safetensors) or a GGUF adapter file (llama.cpp's: general.type
= adapter, tensors blk.N.<weight>.weight.lora_a / lora_b), read into the
pairs the native model adds to its products: y += scale * B (A x), per row
of the requests that use the adapter."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import Model

# the weights an adapter may adapt (GGUF names), in the native order
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# Hugging Face module names -> GGUF weights; fused modules (phi3) split by rows
_HF = {"q_proj": ("attn_q",), "k_proj": ("attn_k",), "v_proj": ("attn_v",),
       "o_proj": ("attn_output",), "gate_proj": ("ffn_gate",), "up_proj": ("ffn_up",),
       "down_proj": ("ffn_down",), "qkv_proj": ("attn_q", "attn_k", "attn_v"),
       "gate_up_proj": ("ffn_gate", "ffn_up")}
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")

Pair = tuple[int, int, np.ndarray, np.ndarray]


class AdapterError(ValueError):
    """An adapter that does not fit the model or cannot be read."""


DTYPES = {"f16": np.float16, "f32": np.float32}


def load(path: str | os.PathLike, model: "Model", scale: float = 1.0,
         dtype: str = "f16") -> list[Pair]:
    """The adapter at path as (layer, target index, A (rank, cols), B (rows,
    rank) scaled) for model, stored as dtype ("f16": half the bytes a token
    reads; "f32"); raises AdapterError when it does not fit."""
    path = os.fspath(path)
    if dtype not in DTYPES:
        raise AdapterError(f"LoRA dtype must be 'f16' or 'f32', got {dtype!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale):
        raise AdapterError(f"LoRA scale must be a finite number, got {scale!r}")
    if os.path.isdir(path):
        pairs = _peft(path, model)
    elif os.path.isfile(path):
        pairs = _gguf(path, model)
    else:
        raise FileNotFoundError(f"LoRA adapter not found: {path!r}")
    if not pairs:
        raise AdapterError(f"{path}: the adapter adapts no weight of the model")
    out = []
    for layer, name, a, b, s in pairs:
        rows, cols = _shape(model, name)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != cols or b.shape[0] != rows or \
                a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise AdapterError(f"{path}: layer {layer} {name}: A {a.shape} and B {b.shape} do "
                               f"not fit the weight's ({rows}, {cols})")
        if not 0 <= layer < model.config["n_layer"]:
            raise AdapterError(f"{path}: layer {layer} is outside the model's "
                               f"{model.config['n_layer']}")
        a, b = a.astype(np.float32), b.astype(np.float32)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise AdapterError(f"{path}: layer {layer} {name}: A or B holds NaN or inf")
        # the update is (s * scale) B A: the factor split between A and B so
        # that both have the same largest magnitude (float16 keeps small
        # updates out of its subnormals, and large ones in range)
        ma, mb = float(np.abs(a).max()), float(np.abs(b).max()) * abs(s * scale)
        c = np.sqrt(mb / ma) if ma > 0 and mb > 0 else 1.0
        a, b = a * np.float32(c), b * np.float32(s * scale / c)
        if dtype == "f16" and max(np.abs(a).max(), np.abs(b).max()) > 65504:
            raise AdapterError(f"{path}: layer {layer} {name}: values beyond float16's range; "
                               "load it with dtype='f32'")
        out.append((layer, TARGETS.index(name), np.ascontiguousarray(a, DTYPES[dtype]),
                    np.ascontiguousarray(b, DTYPES[dtype])))
    return out


def _shape(model: "Model", name: str) -> tuple[int, int]:
    c = model.config
    qd, kvd = c["n_head"] * c["head_dim"], c["n_head_kv"] * c["head_dim"]
    D, F = c["n_embd"], c["n_ff"]
    return {"attn_q": (qd, D), "attn_k": (kvd, D), "attn_v": (kvd, D), "attn_output": (D, qd),
            "ffn_gate": (F, D), "ffn_up": (F, D), "ffn_down": (D, F)}[name]


def _permuted(model: "Model", name: str, b: np.ndarray) -> np.ndarray:
    """B's rows in the file's order: GGUF llama stores q / k rows permuted for
    its adjacent-pair RoPE (as llmrt convert and llama.cpp's converter do)."""
    from .families import family
    if not family(model.arch).permute_qk or name not in ("attn_q", "attn_k"):
        return b
    from .arrays import permute_qk
    heads = model.config["n_head"] if name == "attn_q" else model.config["n_head_kv"]
    return permute_qk(b, heads)


def _peft(d: str, model: "Model") -> list[tuple[int, str, np.ndarray, np.ndarray, float]]:
    cfg_path = os.path.join(d, "adapter_config.json")
    if not os.path.isfile(cfg_path):
        raise AdapterError(f"{d}: no adapter_config.json (not a PEFT adapter directory)")
    with open(cfg_path, encoding="utf-8") as f:
        cfg: dict[str, Any] = json.load(f)
    r, alpha = cfg.get("r"), cfg.get("lora_alpha", cfg.get("r"))
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise AdapterError(f"{cfg_path}: needs an integer r >= 1 and a numeric lora_alpha")
    s = alpha / (np.sqrt(r) if cfg.get("use_rslora") else r)
    weights = os.path.join(d, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        raise AdapterError(f"{d}: no adapter_model.safetensors")
    from safetensors.numpy import load_file
    tensors = load_file(weights)
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, t in tensors.items():
        m = _PEFT_KEY.search(key)
        if m is None:
            raise AdapterError(f"{weights}: tensor {key!r} is not a LoRA A / B of a layer's "
                               f"attention or MLP projection")
        module = m.group(2)
        if module not in _HF:
            raise AdapterError(f"{weights}: unknown target module {module!r} (supported: "
                               f"{', '.join(sorted(_HF))})")
        found.setdefault((int(m.group(1)), module), {})[m.group(3)] = t.astype(np.float32)
    out = []
    for (layer, module), ab in sorted(found.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{weights}: layer {layer} {module} has lora_A or lora_B alone")
        a, b = ab["A"], ab["B"]
        names = _HF[module]
        if len(names) == 1:
            out.append((layer, names[0], a, _permuted(model, names[0], b), s))
            continue
        sizes = [_shape(model, n)[0] for n in names]  # a fused module: B split by rows
        if b.ndim != 2 or b.shape[0] != sum(sizes):
            raise AdapterError(f"{weights}: layer {layer} {module}: B has {b.shape[0] if b.ndim == 2 else '?'} "
                               f"rows, the fused weight {sum(sizes)}")
        for n, part in zip(names, np.split(b, np.cumsum(sizes)[:-1])):
            out.append((layer, n, a, _permuted(model, n, part), s))
    return out


def _gguf(path: str, model: "Model") -> list[tuple[int, str, np.ndarray, np.ndarray, float]]:
    from .arrays import dequantize_array
    from .ggml_types import BY_ID
    from .gguf_file import GGUFFile
    f = GGUFFile(path)
    meta = f.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type", "lora") != "lora":
        raise AdapterError(f"{path}: not a LoRA adapter (general.type = "
                           f"{meta.get('general.type')!r}, adapter.type = "
                           f"{meta.get('adapter.type')!r})")
    arch = meta.get("general.architecture")
    if arch is not None and arch != model.arch:
        raise AdapterError(f"{path}: an adapter for {arch!r}, the model is {model.arch!r}")
    alpha = meta.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, (int, float, np.floating)) or not np.isfinite(alpha):
        raise AdapterError(f"{path}: adapter.lora.alpha must be a number")

    def read(name: str) -> np.ndarray:
        t = f.tensors[name]
        gt = BY_ID.get(t.type_id)
        if gt is None or len(t.shape) != 2 or t.shape[0] % gt.block:
            raise AdapterError(f"{path}: tensor {name!r} must be 2-D of a supported type")
        cols, rows = int(t.shape[0]), int(t.shape[1])
        raw = f.tensor_bytes(t, rows * gt.row_bytes(cols))
        return dequantize_array(raw, t.type_id, (rows, cols))

    pat = re.compile(r"^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$")
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name in f.tensors:
        m = pat.match(name)
        if m is None or m.group(2) not in TARGETS:
            raise AdapterError(f"{path}: tensor {name!r} is not a LoRA a / b of "
                               f"{', '.join(TARGETS)}")
        found.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = read(name)
    out = []
    for (layer, n), ab in sorted(found.items()):
        if set(ab) != {"a", "b"}:
            raise AdapterError(f"{path}: layer {layer} {n} has lora_a or lora_b alone")
        a, b = ab["a"], ab["b"]  # (rank, cols), (rows, rank)
        s = alpha / a.shape[0] if alpha else 1.0
        out.append((layer, n, a, b, s))
    return out
