"""The tokenizer of a Hugging Face checkpoint -> GGUF's tokenizer keys (for
``llmrt convert``): SentencePiece models (tokenizer.model, piece types read
from the model itself) and byte-level BPE (tokenizer.json, its
pre-tokenizer named as llama.cpp names it), special token ids and the chat
template."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from .errors import CheckpointError, UnsupportedModelError


def _json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _user_defined_pieces(model: bytes) -> set[int]:
    """Ids of a SentencePiece model's user-defined pieces (Gemma's turn
    markers), which its Python API does not report: the serialized
    ModelProto's pieces (field 1) with type (field 3) USER_DEFINED (4)."""
    def varint(b: bytes, i: int) -> tuple[int, int]:
        x = shift = 0
        while True:
            if i >= len(b):
                raise CheckpointError("tokenizer.model: truncated")
            c = b[i]
            i += 1
            x |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                return x, i

    def fields(b: bytes):
        i = 0
        while i < len(b):
            key, i = varint(b, i)
            num, wire = key >> 3, key & 7
            v: int | bytes
            if wire == 0:
                v, i = varint(b, i)
            elif wire == 2:
                size, i = varint(b, i)
                v, i = b[i:i + size], i + size
            elif wire == 5:
                v, i = b[i:i + 4], i + 4
            elif wire == 1:
                v, i = b[i:i + 8], i + 8
            else:
                raise CheckpointError("tokenizer.model: not a SentencePiece model")
            yield num, v
    out, idx = set(), 0
    for num, v in fields(model):
        if num != 1:
            continue
        if any(n == 3 and t == _USER for n, t in fields(v)):
            out.add(idx)
        idx += 1
    return out


def _token_id(tok: Any, lookup: dict[str, int]) -> int | None:
    if isinstance(tok, dict):
        tok = tok.get("content")
    return lookup.get(tok) if isinstance(tok, str) else None


def write_tokenizer(d: str, hp: dict, w) -> int:
    """Writes the tokenizer keys; returns the vocabulary size."""
    tc_path = os.path.join(d, "tokenizer_config.json")
    tc = _json(tc_path) if os.path.exists(tc_path) else {}
    V = hp["n_vocab"]
    sp_path, tj_path = os.path.join(d, "tokenizer.model"), os.path.join(d, "tokenizer.json")
    if os.path.exists(sp_path) and hp["family"].sentencepiece:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=sp_path)
        n = sp.get_piece_size()
        with open(sp_path, "rb") as f:
            user = _user_defined_pieces(f.read())
        tokens, scores, types = [], [], []
        for i in range(max(V, n)):
            if i < n:
                tokens.append(sp.id_to_piece(i))
                scores.append(float(sp.get_score(i)))
                types.append(_UNKNOWN if sp.is_unknown(i) else _CONTROL if sp.is_control(i)
                             else _UNUSED if sp.is_unused(i) else _BYTE if sp.is_byte(i)
                             else _USER if i in user else _NORMAL)
            else:
                tokens.append(f"[PAD{i}]")
                scores.append(-1000.0)
                types.append(_UNUSED)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens[:V])
        w.add_token_scores(scores[:V])
        w.add_token_types(types[:V])
        for key, v in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())):
            if v >= 0:
                getattr(w, f"add_{key}_token_id")(v)
        w.add_add_bos_token(bool(tc.get("add_bos_token", True)))
        w.add_add_eos_token(bool(tc.get("add_eos_token", False)))
        if hp["family"].gemma:  # gemma's SentencePiece model adds no space before the text
            w.add_add_space_prefix(False)
    elif os.path.exists(tj_path):
        tj = _json(tj_path)
        model = tj.get("model", {})
        if model.get("type") != "BPE":
            raise UnsupportedModelError(f"{tj_path}: tokenizer model {model.get('type')!r} "
                                        "(byte-level BPE only)")
        vocab: dict[str, int] = dict(model["vocab"])
        added = {a["content"]: a for a in tj.get("added_tokens", [])}
        for a in added.values():
            vocab[a["content"]] = a["id"]
        size = max(V, max(vocab.values()) + 1)
        tokens = [f"[PAD{i}]" for i in range(size)]
        types = [_UNUSED] * size
        for t, i in vocab.items():
            tokens[i] = t
            a = added.get(t)
            types[i] = _NORMAL if a is None else _CONTROL if a.get("special") else _USER
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_pre_name(tj, hp))
        w.add_token_list(tokens[:V])
        w.add_token_types(types[:V])
        w.add_token_merges(merges)
        lookup = {t: i for i, t in enumerate(tokens)}
        cfg = _json(os.path.join(d, "config.json"))
        bos = _token_id(tc.get("bos_token"), lookup)
        eos = _token_id(tc.get("eos_token"), lookup)
        bos = bos if bos is not None else cfg.get("bos_token_id")
        eos = eos if eos is not None else cfg.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0]
        if bos is not None:
            w.add_bos_token_id(int(bos))
        if eos is not None:
            w.add_eos_token_id(int(eos))
        w.add_add_bos_token(bool(tc.get("add_bos_token", False)))
    else:
        raise CheckpointError(f"{d}: no tokenizer.model or tokenizer.json")
    tmpl = tc.get("chat_template")
    if isinstance(tmpl, list):  # named templates: the default one
        tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
    if isinstance(tmpl, str):
        w.add_chat_template(tmpl)
    return V


def _pre_name(tj: dict, hp: dict) -> str:
    """tokenizer.ggml.pre: the name of the pre-tokenizer tokenizer.json uses,
    recognised by its split pattern."""
    from .tokenizer import LLAMA3_SPLIT, O200K_SPLIT, QWEN2_SPLIT
    text = json.dumps(tj.get("pre_tokenizer"))
    pats = []

    def walk(x):
        if isinstance(x, dict):
            if x.get("type") == "Split" and isinstance(x.get("pattern"), dict):
                pats.append(x["pattern"].get("Regex") or x["pattern"].get("String"))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(tj.get("pre_tokenizer"))
    if LLAMA3_SPLIT in pats:
        return "llama-bpe"
    if QWEN2_SPLIT in pats:
        return "qwen2"
    if O200K_SPLIT in pats:
        return "gpt-4o"
    if not pats and '"ByteLevel"' in text:
        return "smollm" if '"individual_digits": true' in text else "default"
    warnings.warn("unrecognised pre-tokenizer in tokenizer.json; the file says 'default' "
                  "(GPT-2 splitting)", stacklevel=3)
    return "default"
