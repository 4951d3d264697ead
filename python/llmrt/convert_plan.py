"""The tensor plan of `llmrt convert`: for each GGUF tensor, the checkpoint
tensors it comes from (checked for presence and shape against the config)
and how to build it (permuted, stacked, split, with the family's fixes)."""

from __future__ import annotations

import glob
import json
import os
from functools import partial
from typing import Any, Callable

import numpy as np

from .arrays import permute_qk
from .errors import CheckpointError

TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.text_model.")


class Tensors:
    """Lazy access to the tensors of a directory's safetensors files.

    bfloat16 tensors (the type most released checkpoints are in) are read
    from the file's own header, as numpy has no bfloat16: widened exactly to
    float32. Every other type goes through the safetensors package."""

    def __init__(self, d: str):
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError("llmrt convert reads checkpoints with the safetensors package: "
                              "pip install safetensors (or llmrt[convert])") from None
        files = sorted(glob.glob(os.path.join(d, "*.safetensors")))
        if not files:
            raise CheckpointError(f"{d}: no *.safetensors files")
        self.where: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._bf16: dict[str, int] = {}  # name -> byte offset in its file
        self._open = safe_open
        for f in files:
            for k, (dtype, shape, start) in _safetensors_header(f).items():
                self.where[k] = f
                self.shapes[k] = shape
                if dtype == "BF16":
                    self._bf16[k] = start

    def get(self, name: str) -> np.ndarray:
        return self.raw(name).astype(np.float32)

    def raw(self, name: str) -> np.ndarray:
        """A tensor as stored (MXFP4 blocks and scales: uint8; bfloat16:
        float32, exactly)."""
        if name in self._bf16:
            shape = self.shapes[name]
            n = int(np.prod(shape, dtype=np.int64))
            u = np.fromfile(self.where[name], dtype="<u2", count=n, offset=self._bf16[name])
            return (u.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        try:
            with self._open(self.where[name], "np") as h:
                return np.asarray(h.get_tensor(name))
        except Exception as e:  # noqa: BLE001 - a type numpy cannot hold, a broken file
            raise CheckpointError(f"{self.where[name]}: tensor {name} cannot be read ({e})") from None


_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _safetensors_header(f: str) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """name -> (dtype, shape, absolute byte offset) from a safetensors file's
    header, each tensor's extent checked against its shape and the file."""
    size = os.path.getsize(f)
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size or n > (100 << 20):
                raise ValueError(f"header length {n}")
            head = json.loads(fh.read(n))
        if not isinstance(head, dict):
            raise ValueError("header is not a JSON object")
        out = {}
        for k, v in head.items():
            if k == "__metadata__":
                continue
            dtype, shape, (a, b) = v["dtype"], tuple(int(x) for x in v["shape"]), v["data_offsets"]
            if any(x < 0 for x in shape) or not 0 <= a <= b or 8 + n + b > size:
                raise ValueError(f"tensor {k}: extent {a}..{b} outside the file")
            if dtype in _ST_SIZES and b - a != _ST_SIZES[dtype] * int(np.prod(shape, dtype=np.int64)):
                raise ValueError(f"tensor {k}: {b - a} bytes for shape {list(shape)} of {dtype}")
            out[k] = (dtype, shape, 8 + n + a)
        return out
    except Exception as e:  # noqa: BLE001 - a broken file
        raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None


def _stack(ts: Tensors, names: list[str]) -> np.ndarray:
    return np.stack([ts.get(n) for n in names])


class _Planner:
    """The conversion plan being built: (GGUF name, numpy shape, loader) for
    each tensor, each source checked for presence and shape."""

    def __init__(self, ts: Tensors):
        self.ts = ts
        self.plan: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]] = []

    def src(self, name: str, shape: tuple[int, ...]) -> str:
        if name not in self.ts.shapes:
            raise CheckpointError(f"the checkpoint has no tensor {name!r}")
        if self.ts.shapes[name] != shape:
            raise CheckpointError(f"tensor {name!r} has shape {self.ts.shapes[name]}, the config "
                                  f"implies {shape}")
        return name

    def add(self, gname: str, name: str, shape: tuple[int, ...],
            fix: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.src(name, shape)
        ts = self.ts
        self.plan.append((gname, shape, lambda: fix(ts.get(name)) if fix else ts.get(name)))


def tensor_plan(hp: dict, ts: Tensors) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(GGUF name, numpy shape, loader) for every tensor, after checking that
    the checkpoint has each one with the shape the config implies."""
    D, V = hp["n_embd"], hp["n_vocab"]
    pl = _Planner(ts)
    if hp["multimodal"]:  # the text model's tensors, under one of two prefixes
        hp["prefix"] = next((p for p in TEXT_PREFIXES if p + "embed_tokens.weight" in ts.shapes),
                            None)
        if hp["prefix"] is None:
            raise CheckpointError("the checkpoint has no language model tensors "
                                  f"({' or '.join(p + 'embed_tokens.weight' for p in TEXT_PREFIXES)})")
    pre = hp["prefix"]
    pl.add("token_embd.weight", pre + "embed_tokens.weight", (V, D))
    # gemma's norms scale by (1 + w); the file holds 1 + w (as llama.cpp's converter writes)
    norm_fix = (lambda w: w + 1.0) if hp["family"].gemma else None
    for i in range(hp["n_layer"]):
        _attention_plan(pl, hp, f"blk.{i}.", f"{pre}layers.{i}.", norm_fix)
        _ffn_plan(pl, hp, f"blk.{i}.", f"{pre}layers.{i}.", norm_fix)
    pl.add("output_norm.weight", pre + "norm.weight", (D,), norm_fix)
    plan = pl.plan
    if hp["rope_factors"] is not None:
        f = hp["rope_factors"]
        plan.append(("rope_freqs.weight", f.shape, lambda: f))
    if hp["longrope"] is not None:
        lr = hp["longrope"]
        plan.append(("rope_factors_long.weight", lr["long_factor"].shape, lambda: lr["long_factor"]))
        plan.append(("rope_factors_short.weight", lr["short_factor"].shape,
                     lambda: lr["short_factor"]))
    if not hp["tied"] and "lm_head.weight" in ts.shapes:
        pl.add("output.weight", "lm_head.weight", (V, D))
    elif not hp["tied"]:
        raise CheckpointError("the checkpoint has no tensor 'lm_head.weight' (and the config "
                              "does not tie it to the embeddings)")
    return plan


def _attention_plan(pl: _Planner, hp: dict, p: str, h: str, norm_fix: Any) -> None:
    """One layer's norm and attention tensors (p: GGUF's prefix, h: the checkpoint's)."""
    D, H, KV, hd = hp["n_embd"], hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    fam = hp["family"]
    llama = fam.permute_qk
    pl.add(p + "attn_norm.weight", h + "input_layernorm.weight", (D,), norm_fix)
    if fam.fused_qkv:  # q/k/v rows in one tensor, kept fused
        pl.add(p + "attn_qkv.weight", h + "self_attn.qkv_proj.weight", ((H + 2 * KV) * hd, D))
    else:
        pl.add(p + "attn_q.weight", h + "self_attn.q_proj.weight", (H * hd, D),
               (lambda w: permute_qk(w, H)) if llama else None)
        pl.add(p + "attn_k.weight", h + "self_attn.k_proj.weight", (KV * hd, D),
               (lambda w: permute_qk(w, KV)) if llama else None)
        pl.add(p + "attn_v.weight", h + "self_attn.v_proj.weight", (KV * hd, D))
    pl.add(p + "attn_output.weight", h + "self_attn.o_proj.weight", (D, H * hd))
    if fam.qkv_bias or h + "self_attn.q_proj.bias" in pl.ts.shapes:
        pl.add(p + "attn_q.bias", h + "self_attn.q_proj.bias", (H * hd,))
        pl.add(p + "attn_k.bias", h + "self_attn.k_proj.bias", (KV * hd,))
        pl.add(p + "attn_v.bias", h + "self_attn.v_proj.bias", (KV * hd,))
    if fam.biases:  # gpt-oss: the output projection's bias and a sink logit per head
        pl.add(p + "attn_output.bias", h + "self_attn.o_proj.bias", (D,))
    if fam.sinks:
        pl.add(p + "attn_sinks.weight", h + "self_attn.sinks", (H,))
    if fam.qk_norm:  # RMSNorm of each head of q and k
        pl.add(p + "attn_q_norm.weight", h + "self_attn.q_norm.weight", (hd,), norm_fix)
        pl.add(p + "attn_k_norm.weight", h + "self_attn.k_norm.weight", (hd,), norm_fix)


def _ffn_plan(pl: _Planner, hp: dict, p: str, h: str, norm_fix: Any) -> None:
    """One layer's FFN norms and weights (dense, fused gate/up, or experts)."""
    D, F, E = hp["n_embd"], hp["n_ff"], hp["n_expert"]
    if hp["family"].post_norms:  # norms after attention and after the FFN, and one before it
        pl.add(p + "post_attention_norm.weight", h + "post_attention_layernorm.weight", (D,),
               norm_fix)
        pl.add(p + "ffn_norm.weight", h + "pre_feedforward_layernorm.weight", (D,), norm_fix)
        pl.add(p + "post_ffw_norm.weight", h + "post_feedforward_layernorm.weight", (D,),
               norm_fix)
    else:  # (gpt-oss's files name it post_attention_norm, as llama.cpp's converter does)
        pl.add(p + ("post_attention_norm.weight" if hp["family"].ffn_norm_post_attn
                    else "ffn_norm.weight"), h + "post_attention_layernorm.weight", (D,))
    if E and h + "mlp.router.weight" in pl.ts.shapes:
        _gpt_oss_moe_plan(pl, hp, p, h)
    elif E:
        _moe_plan(pl, hp, p, h)
    elif hp["family"].fused_qkv:  # gate rows, then up rows, in one tensor
        pl.add(p + "ffn_up.weight", h + "mlp.gate_up_proj.weight", (2 * F, D))
        pl.add(p + "ffn_down.weight", h + "mlp.down_proj.weight", (D, F))
    else:
        pl.add(p + "ffn_gate.weight", h + "mlp.gate_proj.weight", (F, D))
        pl.add(p + "ffn_up.weight", h + "mlp.up_proj.weight", (F, D))
        pl.add(p + "ffn_down.weight", h + "mlp.down_proj.weight", (D, F))


def _moe_plan(pl: _Planner, hp: dict, p: str, h: str) -> None:
    """A sparse layer: the router, the experts stacked (E, rows, cols) from one
    tensor per expert (Mixtral's w1 / w3 / w2, Qwen's gate / up / down_proj)
    or from the fused (E, 2F, D) / (E, D, F) form, and a shared expert."""
    D, F, E = hp["n_embd"], hp["n_ff_exp"], hp["n_expert"]
    mixtral = h + "block_sparse_moe.gate.weight" in pl.ts.shapes
    m = h + ("block_sparse_moe." if mixtral else "mlp.")
    pl.add(p + "ffn_gate_inp.weight", m + "gate.weight", (E, D))
    fused = m + "experts.gate_up_proj" in pl.ts.shapes
    if fused:
        src = pl.src(m + "experts.gate_up_proj", (E, 2 * F, D))
        ts = pl.ts
        pl.plan.append((p + "ffn_gate_exps.weight", (E, F, D), lambda: ts.get(src)[:, :F]))
        pl.plan.append((p + "ffn_up_exps.weight", (E, F, D), lambda: ts.get(src)[:, F:]))
        pl.add(p + "ffn_down_exps.weight", m + "experts.down_proj", (E, D, F))
    else:
        parts = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
        for gname, w, shape in (("ffn_gate_exps", parts[0], (F, D)),
                                ("ffn_up_exps", parts[1], (F, D)),
                                ("ffn_down_exps", parts[2], (D, F))):
            names = [pl.src(f"{m}experts.{e}.{w}.weight", shape) for e in range(E)]
            pl.plan.append((p + gname + ".weight", (E, *shape), partial(_stack, pl.ts, names)))
    if hp["family"].shared_expert:
        Fs = hp["n_ff_shexp"]
        pl.add(p + "ffn_gate_inp_shexp.weight", m + "shared_expert_gate.weight", (1, D),
               lambda w: w.reshape(D))
        pl.plan[-1] = (pl.plan[-1][0], (D,), pl.plan[-1][2])
        pl.add(p + "ffn_gate_shexp.weight", m + "shared_expert.gate_proj.weight", (Fs, D))
        pl.add(p + "ffn_up_shexp.weight", m + "shared_expert.up_proj.weight", (Fs, D))
        pl.add(p + "ffn_down_shexp.weight", m + "shared_expert.down_proj.weight", (D, Fs))


# MXFP4's 4-bit values (E2M1), by code
_FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                 -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def mxfp4_dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OpenAI's MXFP4 checkpoint tensors -> float32: blocks (..., n/32, 16)
    bytes, each two 4-bit codes (the low nibble first), and scales (..., n/32)
    power-of-two exponents biased by 127 -> (..., n)."""
    b = np.asarray(blocks, np.uint8)
    codes = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(*b.shape[:-1], 32)
    exp = np.asarray(scales, np.int32)[..., None] - 127
    return np.ldexp(_FP4[codes], exp).reshape(*b.shape[:-2], -1).astype(np.float32)


def _gpt_oss_moe_plan(pl: _Planner, hp: dict, p: str, h: str) -> None:
    """gpt-oss's sparse layer: the router with its bias; the experts' gate and
    up rows interleaved in one tensor (gate even, up odd), stored (E, D, 2F)
    with their biases, or as MXFP4 blocks and scales (E, 2F, D/32, 16) /
    (E, 2F, D/32); down (E, F, D) or its blocks (E, D, F/32, 16)."""
    D, F, E = hp["n_embd"], hp["n_ff_exp"], hp["n_expert"]
    m = h + "mlp."
    pl.add(p + "ffn_gate_inp.weight", m + "router.weight", (E, D))
    pl.add(p + "ffn_gate_inp.bias", m + "router.bias", (E,))
    ts = pl.ts
    if m + "experts.gate_up_proj_blocks" in ts.shapes:  # the released checkpoints
        if D % 32 or F % 32:
            raise CheckpointError("MXFP4 expert tensors need widths that are multiples of 32")
        gu = (pl.src(m + "experts.gate_up_proj_blocks", (E, 2 * F, D // 32, 16)),
              pl.src(m + "experts.gate_up_proj_scales", (E, 2 * F, D // 32)))
        dn = (pl.src(m + "experts.down_proj_blocks", (E, D, F // 32, 16)),
              pl.src(m + "experts.down_proj_scales", (E, D, F // 32)))

        def gate_up(part: int) -> np.ndarray:  # (E, F, D)
            return mxfp4_dequantize(ts.raw(gu[0])[:, part::2], ts.raw(gu[1])[:, part::2])

        pl.plan.append((p + "ffn_gate_exps.weight", (E, F, D), lambda: gate_up(0)))
        pl.plan.append((p + "ffn_up_exps.weight", (E, F, D), lambda: gate_up(1)))
        pl.plan.append((p + "ffn_down_exps.weight", (E, D, F),
                        lambda: mxfp4_dequantize(ts.raw(dn[0]), ts.raw(dn[1]))))
    else:  # (transformers writes the weights transposed: x @ W)
        src = pl.src(m + "experts.gate_up_proj", (E, D, 2 * F))
        pl.plan.append((p + "ffn_gate_exps.weight", (E, F, D),
                        lambda: ts.get(src)[:, :, 0::2].transpose(0, 2, 1).copy()))
        pl.plan.append((p + "ffn_up_exps.weight", (E, F, D),
                        lambda: ts.get(src)[:, :, 1::2].transpose(0, 2, 1).copy()))
        pl.add(p + "ffn_down_exps.weight", m + "experts.down_proj", (E, F, D),
               lambda w: w.transpose(0, 2, 1).copy())
        pl.plan[-1] = (pl.plan[-1][0], (E, D, F), pl.plan[-1][2])
    bias = pl.src(m + "experts.gate_up_proj_bias", (E, 2 * F))
    pl.plan.append((p + "ffn_gate_exps.bias", (E, F), lambda: ts.get(bias)[:, 0::2].copy()))
    pl.plan.append((p + "ffn_up_exps.bias", (E, F), lambda: ts.get(bias)[:, 1::2].copy()))
    pl.add(p + "ffn_down_exps.bias", m + "experts.down_proj_bias", (E, D))
