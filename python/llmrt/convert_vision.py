"""The vision half of a multimodal checkpoint -> an mmproj GGUF file, in
llama.cpp's `clip` layout and keys (llama.cpp's mtmd reads it, as llmrt
does): the SigLIP tower and the projector of Gemma 3
(Gemma3ForConditionalGeneration) or Idefics3 / SmolVLM
(Idefics3ForConditionalGeneration).

Tensors are written as stored (GGUF shape = the torch shape reversed), with
the values llama.cpp's converter writes: gemma 3's soft-embedding norm as
1 + w, its input projection as the (vision, text) parameter it is. Types:
vectors, the patch kernel and the positions float32; gemma 3's projection
f16 (f32 for an f32 file); other matrices f32, f16, or q8_0 for a quantized
target (f16 where a row is not whole blocks).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from .convert_plan import Tensors
from .errors import CheckpointError, UnsupportedModelError
from .families import PROJECTORS

VISION_PREFIXES = ("vision_tower.vision_model.", "model.vision_tower.vision_model.",
                   "vision_tower.", "model.vision_tower.", "model.vision_model.", "vision_model.")
Plan = list[tuple[str, tuple[int, ...], str, Callable[[], np.ndarray]]]


def projector_of(hf: str) -> str | None:
    """The projector type a Hugging Face architecture's vision half has."""
    return next((p.name for p in PROJECTORS.values() if hf in p.hf_classes), None)


def _json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _matrix_type(target: str, cols: int) -> str:
    if target == "f32":
        return "f32"
    if target in ("f16", "bf16") or cols % 32:
        return "f16"
    return "q8_0"


def vision_hparams(cfg: dict, d: str, text_hidden: int) -> dict[str, Any]:
    """The tower's and projector's numbers from config.json and the
    preprocessor's config."""
    hf = (cfg.get("architectures") or ["?"])[0]
    kind = projector_of(hf)
    if kind is None:
        raise UnsupportedModelError(f"{d}: {hf} has no vision half llmrt converts")
    vc = cfg.get("vision_config") or {}
    defaults = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                    num_attention_heads=16, image_size=896, patch_size=14) \
        if kind == "gemma3" else {}
    v = {**defaults, **vc}
    try:
        hp: dict[str, Any] = dict(kind=kind, D=int(v["hidden_size"]), F=int(v["intermediate_size"]),
                  L=int(v["num_hidden_layers"]), H=int(v["num_attention_heads"]),
                  S=int(v["image_size"]), p=int(v["patch_size"]), out=text_hidden,
                  eps=float(v.get("layer_norm_eps", 1e-6)))
    except KeyError as e:
        raise CheckpointError(f"{d}/config.json: vision_config has no {e.args[0]!r}") from None
    if v.get("hidden_act", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_new"):
        raise UnsupportedModelError(f"{d}: vision activation {v.get('hidden_act')!r}")
    G = hp["S"] // hp["p"]
    if kind == "gemma3":
        tokens = int(cfg.get("mm_tokens_per_image", 256))
        side = int(round(tokens ** 0.5))
        if side * side != tokens or G % side:
            raise CheckpointError(f"{d}: mm_tokens_per_image {tokens} does not pool a "
                                  f"{G}x{G} patch grid")
        hp["merge"] = G // side
    else:
        hp["merge"] = int(cfg.get("scale_factor", 2))
    pre = {**_json(os.path.join(d, "preprocessor_config.json")),
           **_json(os.path.join(d, "processor_config.json"))}
    hp["mean"] = [float(x) for x in pre.get("image_mean", [0.5, 0.5, 0.5])]
    hp["std"] = [float(x) for x in pre.get("image_std", [0.5, 0.5, 0.5])]
    hp["longest_edge"] = int((pre.get("size") or {}).get("longest_edge", hp["S"]))
    tile = int((pre.get("max_image_size") or {}).get("longest_edge", hp["S"]))
    if kind == "idefics3" and tile != hp["S"]:
        raise CheckpointError(f"{d}: tiles of {tile} pixels for a tower of {hp['S']}")
    if G % hp["merge"] or hp["D"] % hp["H"]:
        raise CheckpointError(f"{d}: the vision config's sizes do not fit together")
    return hp


def vision_plan(hp: dict, ts: Tensors, target: str) -> Plan:
    """(GGUF name, numpy shape, type, loader) of every mmproj tensor, each
    checkpoint tensor checked for presence and shape."""
    pre = next((p for p in VISION_PREFIXES if p + "embeddings.patch_embedding.weight"
                in ts.shapes), None)
    if pre is None:
        raise CheckpointError("the checkpoint has no vision tower "
                              "(…embeddings.patch_embedding.weight)")
    D, F, p, G = hp["D"], hp["F"], hp["p"], hp["S"] // hp["p"]
    plan: Plan = []

    def add(gname: str, name: str, shape: tuple[int, ...], tt: str | None = None,
            fix: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if ts.shapes.get(name) != shape:
            raise CheckpointError(f"tensor {name!r}: "
                                  + (f"shape {ts.shapes[name]}, expected {shape}"
                                     if name in ts.shapes else "missing"))
        t = tt or ("f32" if len(shape) == 1 else _matrix_type(target, shape[-1]))
        plan.append((gname, shape, t, lambda: fix(ts.get(name)) if fix else ts.get(name)))

    e = pre + "embeddings."
    add("v.patch_embd.weight", e + "patch_embedding.weight", (D, 3, p, p), "f32")
    add("v.patch_embd.bias", e + "patch_embedding.bias", (D,))
    add("v.position_embd.weight", e + "position_embedding.weight", (G * G, D), "f32")
    for i in range(hp["L"]):
        s, g = f"{pre}encoder.layers.{i}.", f"v.blk.{i}."
        for a, b in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                     ("self_attn.v_proj", "attn_v"), ("self_attn.out_proj", "attn_out")):
            add(g + b + ".weight", s + a + ".weight", (D, D))
            add(g + b + ".bias", s + a + ".bias", (D,))
        for a, b in (("layer_norm1", "ln1"), ("layer_norm2", "ln2")):
            add(g + b + ".weight", s + a + ".weight", (D,))
            add(g + b + ".bias", s + a + ".bias", (D,))
        add(g + "ffn_up.weight", s + "mlp.fc1.weight", (F, D))
        add(g + "ffn_up.bias", s + "mlp.fc1.bias", (F,))
        add(g + "ffn_down.weight", s + "mlp.fc2.weight", (D, F))
        add(g + "ffn_down.bias", s + "mlp.fc2.bias", (D,))
    add("v.post_ln.weight", pre + "post_layernorm.weight", (D,))
    add("v.post_ln.bias", pre + "post_layernorm.bias", (D,))
    if hp["kind"] == "gemma3":
        mp = next((q for q in ("multi_modal_projector.", "model.multi_modal_projector.")
                   if q + "mm_soft_emb_norm.weight" in ts.shapes), "multi_modal_projector.")
        add("mm.input_projection.weight", mp + "mm_input_projection_weight", (D, hp["out"]),
            "f32" if target == "f32" else "f16")
        # Gemma's RMSNorm scales by 1 + w: the file holds 1 + w (llama.cpp's)
        add("mm.soft_emb_norm.weight", mp + "mm_soft_emb_norm.weight", (D,),
            fix=lambda w: w + 1.0)
    else:
        fc = next((q for q in ("model.connector.modality_projection.proj.weight",
                               "connector.modality_projection.proj.weight")
                   if q in ts.shapes), "model.connector.modality_projection.proj.weight")
        add("mm.model.fc.weight", fc, (hp["out"], D * hp["merge"] ** 2))
    return plan


def write_mmproj(d: str, cfg: dict, text_hidden: int, out: str, target: str,
                 progress: Any) -> dict[str, Any]:
    """Writes the checkpoint's vision half to `out`; returns a summary."""
    from gguf import GGUFWriter

    from .quantization import write_or_remove, write_tensors
    from .utils import progress_bar
    hp = vision_hparams(cfg, d, text_hidden)
    plan = vision_plan(hp, Tensors(d), target)
    w = GGUFWriter(out, "clip")
    w.add_type("mmproj")
    w.add_name(os.path.basename(os.path.normpath(d)))
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", hp["kind"])
    w.add_bool("clip.use_gelu", True)
    for k, val in (("image_size", hp["S"]), ("patch_size", hp["p"]), ("embedding_length", hp["D"]),
                   ("feed_forward_length", hp["F"]), ("block_count", hp["L"]),
                   ("attention.head_count", hp["H"]), ("projection_dim", hp["out"]),
                   ("projector.scale_factor", hp["merge"])):
        w.add_uint32(f"clip.vision.{k}", val)
    if hp["kind"] == "idefics3":
        w.add_uint32("clip.vision.preproc_image_size", hp["longest_edge"])
    w.add_float32("clip.vision.attention.layer_norm_epsilon", hp["eps"])
    w.add_array("clip.vision.image_mean", hp["mean"])
    w.add_array("clip.vision.image_std", hp["std"])
    write_or_remove(out, lambda: write_tensors(
        w, plan, progress_bar(sum(int(np.prod(s)) for _, s, _, _ in plan),
                              f"mmproj {target}", progress)))
    return dict(projector=hp["kind"], tensors=len(plan),
                types={name: t for name, _, t, _ in plan})

