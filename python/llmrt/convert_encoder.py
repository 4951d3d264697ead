"""`llmrt convert` of encoder checkpoints (BertModel, XLMRobertaModel,
NomicBertModel and the BERT / XLM-R sequence classifiers) to GGUF files in
llama.cpp's `bert` / `nomic-bert` layout and keys."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .convert_plan import Tensors
from .errors import CheckpointError
from .families import ENCODER_FAMILIES, EncoderFamily
from .ggml_types import FILE_TYPES
from .quantization import tensor_type, write_or_remove, write_tensors
from .utils import progress_bar

# Hugging Face class -> (family, the weights' prefix inside a classifier)
ENCODER_CLASSES = {c: f for f in ENCODER_FAMILIES.values() for c in f.hf_classes}
POOLING_IDS = {"mean": 1, "cls": 2, "last": 3, "rank": 4}


def is_encoder_checkpoint(top: dict) -> bool:
    return (top.get("architectures") or [""])[0] in ENCODER_CLASSES


def _pooling(d: str, classifier: bool) -> str:
    """The pooling a sentence-transformers directory names (modules.json ->
    its Pooling module's config), rank for a classifier, else mean."""
    if classifier:
        return "rank"
    try:
        with open(os.path.join(d, "modules.json")) as f:
            mods = json.load(f)
        for m in mods:
            if str(m.get("type", "")).endswith("Pooling"):
                with open(os.path.join(d, m.get("path", ""), "config.json")) as f:
                    pc = json.load(f)
                for key, name in (("pooling_mode_cls_token", "cls"),
                                  ("pooling_mode_mean_tokens", "mean"),
                                  ("pooling_mode_lasttoken", "last")):
                    if pc.get(key):
                        return name
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return "mean"


def _prefix(ts: Tensors, cands: tuple[str, ...], probe: str) -> str:
    for p in cands:
        if p + probe in ts.shapes:
            return p
    raise CheckpointError(f"no tensor {probe!r} under any of the prefixes {cands}")


def encoder_plan(c: dict, fam: EncoderFamily, ts: Tensors) -> tuple[list, dict]:
    """(GGUF name, numpy shape, loader) for every tensor, and the numbers."""
    nomic = fam.rotary
    if nomic:
        D, H, L = c["n_embd"], c["n_head"], c["n_layer"]
        F = c.get("n_inner") or 4 * D
        eps = c.get("layer_norm_epsilon", 1e-12)
        ctx = c.get("n_positions", 2048)
        if c.get("prenorm") or c.get("rotary_emb_fraction", 1.0) != 1.0 or \
                c.get("rotary_emb_interleaved"):
            raise CheckpointError("nomic-bert: only post-norm layers with full, non-interleaved "
                                  "rotary positions convert")
    else:
        D, H, L = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
        F, eps = c["intermediate_size"], c.get("layer_norm_eps", 1e-12)
        ctx = c["max_position_embeddings"]
        if c.get("hidden_act", "gelu") != "gelu" or \
                c.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError("bert: only GELU layers with absolute positions convert")
    plan: list[tuple[str, tuple[int, ...], Any]] = []
    pre = _prefix(ts, ("", "bert.", "roberta.", "model."), "embeddings.word_embeddings.weight")

    def add(gname: str, hf: str, shape: tuple[int, ...] | None = None, fix=None) -> None:
        if hf not in ts.shapes:
            raise CheckpointError(f"missing tensor {hf!r}")
        got = ts.shapes[hf]
        if shape is not None and tuple(got) != shape:
            raise CheckpointError(f"tensor {hf!r} has shape {list(got)}, expected {list(shape)}")
        plan.append((gname, tuple(got) if fix is None else fix(got),
                     (lambda h=hf, g=fix: ts.get(h)) if fix is None else
                     (lambda h=hf: ts.get(h)[drop:])))

    V = ts.shapes.get(pre + "embeddings.word_embeddings.weight", (0, 0))[0]
    add("token_embd.weight", pre + "embeddings.word_embeddings.weight", (V, D))
    drop = 0
    if not nomic:
        # XLM-R / RoBERTa count positions from padding_idx + 1: those rows go
        pos = pre + "embeddings.position_embeddings.weight"
        drop = c.get("pad_token_id", 1) + 1 if "Roberta" in c["architectures"][0] else 0
        P = ts.shapes.get(pos, (0,))[0]
        if P - drop < 1:
            raise CheckpointError(f"tensor {pos!r}: {P} positions")
        add("position_embd.weight", pos, (P, D), fix=lambda s: (s[0] - drop, s[1]))
        ctx = P - drop
    tt = pre + "embeddings.token_type_embeddings.weight"
    if tt in ts.shapes:
        add("token_types.weight", tt)
    if nomic:
        add("token_embd_norm.weight", pre + "emb_ln.weight", (D,))
        add("token_embd_norm.bias", pre + "emb_ln.bias", (D,))
    else:
        add("token_embd_norm.weight", pre + "embeddings.LayerNorm.weight", (D,))
        add("token_embd_norm.bias", pre + "embeddings.LayerNorm.bias", (D,))
    for i in range(L):
        (_nomic_layer if nomic else _bert_layer)(add, ts, f"blk.{i}.", pre, i, D, F)
    classifier = c["architectures"][0].endswith("ForSequenceClassification")
    if classifier:
        if "classifier.dense.weight" in ts.shapes:  # XLM-R: dense, tanh, out_proj
            names = ("classifier.dense", "classifier.out_proj")
        else:  # BERT: the pooler's dense and tanh, then the classifier
            names = (pre + "pooler.dense", "classifier")
        add("cls.weight", names[0] + ".weight", (D, D))
        add("cls.bias", names[0] + ".bias", (D,))
        O = ts.shapes.get(names[1] + ".weight", (0, 0))[0]
        add("cls.output.weight", names[1] + ".weight", (O, D))
        add("cls.output.bias", names[1] + ".bias", (O,))
    hp = dict(D=D, F=F, H=H, L=L, eps=float(eps), ctx=int(ctx), V=V, classifier=classifier,
              rope_base=float(c.get("rotary_emb_base", 10000.0)),
              types=int(ts.shapes[tt][0]) if tt in ts.shapes else 0)
    return plan, hp


def _nomic_layer(add, ts: Tensors, b: str, pre: str, i: int, D: int, F: int) -> None:
    p = f"{pre}encoder.layers.{i}."
    add(b + "attn_qkv.weight", p + "attn.Wqkv.weight", (3 * D, D))
    add(b + "attn_output.weight", p + "attn.out_proj.weight", (D, D))
    add(b + "attn_output_norm.weight", p + "norm1.weight", (D,))
    add(b + "attn_output_norm.bias", p + "norm1.bias", (D,))
    add(b + "ffn_up.weight", p + "mlp.fc11.weight", (F, D))
    add(b + "ffn_gate.weight", p + "mlp.fc12.weight", (F, D))
    add(b + "ffn_down.weight", p + "mlp.fc2.weight", (D, F))
    add(b + "layer_output_norm.weight", p + "norm2.weight", (D,))
    add(b + "layer_output_norm.bias", p + "norm2.bias", (D,))
    for opt, hf, shape in (("attn_qkv.bias", "attn.Wqkv.bias", (3 * D,)),
                           ("attn_output.bias", "attn.out_proj.bias", (D,)),
                           ("ffn_up.bias", "mlp.fc11.bias", (F,)),
                           ("ffn_down.bias", "mlp.fc2.bias", (D,))):
        if p + hf in ts.shapes:
            if opt == "ffn_up.bias":
                raise CheckpointError("nomic-bert: biases on the gated MLP do not convert")
            add(b + opt, p + hf, shape)


def _bert_layer(add, ts: Tensors, b: str, pre: str, i: int, D: int, F: int) -> None:
    p = f"{pre}encoder.layer.{i}."
    for g, hf in (("attn_q", "attention.self.query"), ("attn_k", "attention.self.key"),
                  ("attn_v", "attention.self.value"), ("attn_output", "attention.output.dense")):
        add(b + g + ".weight", p + hf + ".weight", (D, D))
        add(b + g + ".bias", p + hf + ".bias", (D,))
    add(b + "attn_output_norm.weight", p + "attention.output.LayerNorm.weight", (D,))
    add(b + "attn_output_norm.bias", p + "attention.output.LayerNorm.bias", (D,))
    add(b + "ffn_up.weight", p + "intermediate.dense.weight", (F, D))
    add(b + "ffn_up.bias", p + "intermediate.dense.bias", (F,))
    add(b + "ffn_down.weight", p + "output.dense.weight", (D, F))
    add(b + "ffn_down.bias", p + "output.dense.bias", (D,))
    add(b + "layer_output_norm.weight", p + "output.LayerNorm.weight", (D,))
    add(b + "layer_output_norm.bias", p + "output.LayerNorm.bias", (D,))


def convert_encoder(d: str, top: dict, out: str | os.PathLike, type_name: str,
                    progress: bool | None) -> dict[str, Any]:
    from gguf import GGUFWriter

    from .convert_tokenizer import write_encoder_tokenizer
    arch_hf = top["architectures"][0]
    fam = ENCODER_CLASSES[arch_hf]
    ts = Tensors(d)
    try:
        plan, hp = encoder_plan(top, fam, ts)
    except KeyError as e:
        raise CheckpointError(f"{d}: config.json lacks {e}") from None
    a = fam.arch
    w = GGUFWriter(os.fspath(out), a)
    w.add_name(os.path.basename(os.path.normpath(d)))
    w.add_context_length(hp["ctx"])
    w.add_embedding_length(hp["D"])
    w.add_feed_forward_length(hp["F"])
    w.add_block_count(hp["L"])
    w.add_head_count(hp["H"])
    w.add_layer_norm_eps(hp["eps"])
    w.add_causal_attention(False)
    from gguf import PoolingType
    w.add_pooling_type(PoolingType(POOLING_IDS[_pooling(d, hp["classifier"])]))
    if fam.rotary:
        w.add_rope_freq_base(hp["rope_base"])
    w.add_file_type(FILE_TYPES[type_name])
    n_vocab = write_encoder_tokenizer(d, {"arch": a, "n_vocab": hp["V"], "top": top}, w)
    w.add_token_type_count(max(hp["types"], 1))
    if n_vocab > hp["V"]:
        raise CheckpointError(f"{d}: the tokenizer has {n_vocab} tokens, the embeddings {hp['V']}")

    chosen = {name: tensor_type(name, shape, type_name, False) for name, shape, _ in plan}
    write_or_remove(os.fspath(out), lambda: write_tensors(
        w, [(name, shape, chosen[name], (lambda ld=load: np.asarray(ld(), np.float32)))
            for name, shape, load in plan],
        progress_bar(sum(int(np.prod(shape)) for _, shape, _ in plan), f"convert {type_name}",
                     progress)))
    return dict(arch=arch_hf, tensors=len(plan), vocab=n_vocab, types=chosen, multimodal=False)
