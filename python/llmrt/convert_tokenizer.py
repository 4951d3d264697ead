"""The tokenizer of a Hugging Face checkpoint -> GGUF's tokenizer keys (for
``llmrt convert``): SentencePiece models (tokenizer.model, piece types read
from the model itself) and byte-level BPE (tokenizer.json, its
pre-tokenizer named as llama.cpp names it), special token ids and the chat
template; encoder models' WordPiece and unigram vocabularies
(write_encoder_tokenizer)."""

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


def _pb_varint(b: bytes, i: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        if i >= len(b):
            raise CheckpointError("sentencepiece model: truncated")
        c = b[i]
        i += 1
        x |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return x, i


def _pb_fields(b: bytes):
    """(field number, value) of a serialized protobuf message: varints as
    ints, length-delimited and fixed-width fields as bytes."""
    i = 0
    while i < len(b):
        key, i = _pb_varint(b, i)
        num, wire = key >> 3, key & 7
        v: int | bytes
        if wire == 0:
            v, i = _pb_varint(b, i)
        elif wire == 2:
            size, i = _pb_varint(b, i)
            v, i = b[i:i + size], i + size
        elif wire == 5:
            v, i = b[i:i + 4], i + 4
        elif wire == 1:
            v, i = b[i:i + 8], i + 8
        else:
            raise CheckpointError("not a SentencePiece model")
        yield num, v


def _user_defined_pieces(model: bytes) -> set[int]:
    """Ids of a SentencePiece model's user-defined pieces (Gemma's turn
    markers), which its Python API does not report: the serialized
    ModelProto's pieces (field 1) with type (field 3) USER_DEFINED (4)."""
    out, idx = set(), 0
    for num, v in _pb_fields(model):
        if num != 1:
            continue
        assert isinstance(v, bytes)
        if any(n == 3 and t == _USER for n, t in _pb_fields(v)):
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


# ---- encoder models: BERT WordPiece, XLM-RoBERTa unigram ---------------------------

_PHANTOM = "\u2581"


def write_encoder_tokenizer(d: str, hp: dict, w) -> int:
    """Writes the tokenizer keys of an encoder checkpoint in llama.cpp's layout;
    returns the vocabulary size.

    BERT / nomic-bert WordPiece (tokenizer.json with a WordPiece model, or
    vocab.txt) -> ``tokenizer.ggml.model = "bert"``, tokens in llama.cpp's
    phantom-space form, plus ``tokenizer.ggml.lowercase`` (and
    ``strip_accents`` / ``handle_chinese_chars`` where the checkpoint sets
    them). XLM-RoBERTa (sentencepiece.bpe.model, or tokenizer.json with a
    Unigram model) -> ``"t5"`` with scores and the precompiled charsmap.
    Both: special ids (bos = [CLS] / <s>, eos = sep = [SEP] / </s>, unk, pad,
    mask, cls) and add_bos/add_eos/add_sep. Not ``tokenizer.ggml.token_type_count``
    (the model's type_vocab_size; the caller writes it: without it, pairs get
    token types 0/1 for "bert", all 0 for "t5").

    hp: ``n_vocab`` (config.json's vocab_size; the vocabulary is padded to it
    with unused "[PAD<i>]" tokens, and a tokenizer with ids beyond it is an
    error); other entries are ignored.
    """
    tc_path, tj_path = os.path.join(d, "tokenizer_config.json"), os.path.join(d, "tokenizer.json")
    tc = _json(tc_path) if os.path.exists(tc_path) else {}
    tj = _json(tj_path) if os.path.exists(tj_path) else None
    kind = (tj or {}).get("model", {}).get("type")
    spm_path = os.path.join(d, "sentencepiece.bpe.model")
    if kind == "WordPiece" or (tj is None and os.path.exists(os.path.join(d, "vocab.txt"))):
        tokens, types, ids = _wordpiece_vocab(d, tj, tc)
        scores = None
    elif os.path.exists(spm_path) or kind == "Unigram":
        tokens, scores, types, ids, norm = _unigram_vocab(d, tj, tc, spm_path)
    else:
        raise CheckpointError(f"{d}: no WordPiece (vocab.txt / tokenizer.json) or unigram "
                              "(sentencepiece.bpe.model / tokenizer.json) tokenizer"
                              + (f" (tokenizer.json has a {kind} model)" if kind else ""))
    V = int(hp.get("n_vocab") or 0)
    if V and len(tokens) > V:
        raise CheckpointError(f"{d}: the tokenizer has {len(tokens)} tokens, the model's "
                              f"vocab_size is {V}")
    n = max(V, len(tokens))
    for i in range(len(tokens), n):
        tokens.append(f"[PAD{i}]")
        types.append(_UNUSED)
        if scores is not None:
            scores.append(-10000.0)
    if scores is None:
        w.add_tokenizer_model("bert")
        w.add_tokenizer_pre("default")
        w.add_token_list([t if ty == _CONTROL else t[2:] if t.startswith("##") else _PHANTOM + t
                          for t, ty in zip(tokens, types)])
        w.add_token_types(types)
        lower = tc.get("do_lower_case")
        if not isinstance(lower, bool):
            tn = (tj or {}).get("normalizer") or {}
            lower = tn.get("lowercase", True) if not tc and tn.get("type") == "BertNormalizer" else True
        w.add_bool("tokenizer.ggml.lowercase", bool(lower))
        strip = tc.get("strip_accents")
        if isinstance(strip, bool):
            w.add_bool("tokenizer.ggml.strip_accents", strip)
        if tc.get("tokenize_chinese_chars") is False:
            w.add_bool("tokenizer.ggml.handle_chinese_chars", False)
    else:
        w.add_tokenizer_model("t5")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_add_space_prefix(norm["add_prefix"])
        w.add_remove_extra_whitespaces(norm["remove_ws"])
        if norm["charsmap"]:
            w.add_precompiled_charsmap(norm["charsmap"])
    _write_special_ids(w, ids, unigram=scores is not None)
    return n


def _write_special_ids(w, ids: dict, unigram: bool) -> None:
    """bos = [CLS] / <s>, eos = sep = [SEP] / </s>, unk, pad, mask, cls."""
    for key in ("unk", "pad", "mask"):
        if ids.get(key) is not None:
            getattr(w, f"add_{key}_token_id")(ids[key])
    if ids.get("cls") is not None:
        w.add_bos_token_id(ids["cls"])
        w.add_uint32("tokenizer.ggml.cls_token_id", ids["cls"])  # read by older llama.cpp
    if ids.get("sep") is not None:
        w.add_eos_token_id(ids["sep"])
        w.add_sep_token_id(ids["sep"])
    w.add_add_bos_token(ids.get("cls") is not None)
    w.add_add_eos_token(ids.get("sep") is not None)
    w.add_add_sep_token(unigram and ids.get("cls") is not None)  # <s> a </s></s> b </s>


def _special_name(tc: dict, key: str, default: str) -> str:
    v = tc.get(f"{key}_token", default)
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else default


def _added(tj: dict | None, tc: dict) -> dict[int, tuple[str, bool]]:
    """id -> (text, special) of the added tokens (tokenizer.json's, else
    tokenizer_config.json's added_tokens_decoder)."""
    out: dict[int, tuple[str, bool]] = {}
    if tj is not None:
        for a in tj.get("added_tokens", []):
            out[int(a["id"])] = (a["content"], bool(a.get("special")))
    else:
        for i, a in (tc.get("added_tokens_decoder") or {}).items():
            out[int(i)] = (a["content"], bool(a.get("special")))
    return out


def _table(d: str, pieces: dict[int, str], what: str) -> list[str]:
    n = max(pieces) + 1 if pieces else 0
    if n != len(pieces):
        missing = next(i for i in range(n) if i not in pieces)
        raise CheckpointError(f"{d}: the {what} vocabulary has no token with id {missing}")
    return [pieces[i] for i in range(n)]


def _wordpiece_vocab(d: str, tj: dict | None, tc: dict
                     ) -> tuple[list[str], list[int], dict[str, int | None]]:
    if tj is not None:
        vocab = {int(i): t for t, i in tj["model"]["vocab"].items()}
    else:
        with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
            vocab = {i: line.rstrip("\n") for i, line in enumerate(f)}
    added = _added(tj, tc)
    for i, (t, _) in added.items():
        vocab[i] = t
    tokens = _table(d, vocab, "WordPiece")
    lookup: dict[str, int] = {}
    for i, t in enumerate(tokens):
        lookup.setdefault(t, i)
    ids = {k: lookup.get(_special_name(tc, k, f"[{k.upper()}]"))
           for k in ("unk", "sep", "pad", "cls", "mask")}
    if ids["unk"] is None:
        raise CheckpointError(f"{d}: the WordPiece vocabulary has no unknown token "
                              f"{_special_name(tc, 'unk', '[UNK]')!r}")
    named = {i for i in ids.values() if i is not None}
    types = [_CONTROL if i in named or added.get(i, ("", False))[1]
             else _USER if i in added else _NORMAL for i in range(len(tokens))]
    return tokens, types, ids


def _spm_normalizer(model: bytes) -> dict:
    """model type, charsmap, add_dummy_prefix, remove_extra_whitespaces of a
    serialized sentencepiece ModelProto (trainer_spec = 2 {model_type = 3},
    normalizer_spec = 3 {precompiled_charsmap = 2, add_dummy_prefix = 3,
    remove_extra_whitespaces = 4}; absent fields take the proto's defaults)."""
    out: dict[str, Any] = {"model_type": 1, "charsmap": b"", "add_prefix": True, "remove_ws": True}
    for num, v in _pb_fields(model):
        if num == 2 and isinstance(v, bytes):
            for n2, v2 in _pb_fields(v):
                if n2 == 3 and isinstance(v2, int):
                    out["model_type"] = v2
        elif num == 3 and isinstance(v, bytes):
            for n2, v2 in _pb_fields(v):
                if n2 == 2 and isinstance(v2, bytes):
                    out["charsmap"] = v2
                elif n2 == 3 and isinstance(v2, int):
                    out["add_prefix"] = bool(v2)
                elif n2 == 4 and isinstance(v2, int):
                    out["remove_ws"] = bool(v2)
    return out


def _find(x: Any, typ: str) -> dict | None:
    """The first component of type typ in a tokenizer.json normalizer / pre-tokenizer."""
    if isinstance(x, dict):
        if x.get("type") == typ:
            return x
        x = list(x.values())
    if isinstance(x, list):
        for v in x:
            if (r := _find(v, typ)) is not None:
                return r
    return None


def _unigram_vocab(d: str, tj: dict | None, tc: dict, spm_path: str):
    names = {k: _special_name(tc, k, v) for k, v in
             (("cls", "<s>"), ("pad", "<pad>"), ("sep", "</s>"), ("unk", "<unk>"), ("mask", "<mask>"))}
    if os.path.exists(spm_path):
        import sentencepiece as spm
        with open(spm_path, "rb") as f:
            model = f.read()
        norm = _spm_normalizer(model)
        if norm["model_type"] != 1:
            raise UnsupportedModelError(f"{spm_path}: not a unigram model (model_type "
                                        f"{norm['model_type']})")
        sp = spm.SentencePieceProcessor(model_file=spm_path)
        user = _user_defined_pieces(model)
        # fairseq's layout, as XLMRobertaTokenizer has it: <s> <pad> </s> <unk>,
        # the model's pieces from its 4th on (id + 1), <mask>
        tokens = [names["cls"], names["pad"], names["sep"], names["unk"]]
        scores = [0.0] * 4
        types = [_CONTROL, _CONTROL, _CONTROL, _UNKNOWN]
        for i in range(3, sp.get_piece_size()):
            tokens.append(sp.id_to_piece(i))
            scores.append(float(sp.get_score(i)))
            types.append(_UNKNOWN if sp.is_unknown(i) else _CONTROL if sp.is_control(i)
                         else _UNUSED if sp.is_unused(i) else _BYTE if sp.is_byte(i)
                         else _USER if i in user else _NORMAL)
        tokens.append(names["mask"])
        scores.append(0.0)
        types.append(_CONTROL)
        if tj is not None:  # tokens added after <mask>
            for i, (t, special) in sorted(_added(tj, tc).items()):
                if i >= len(tokens):
                    if i > len(tokens):
                        raise CheckpointError(f"{d}: added token {t!r} has id {i}, after a gap")
                    tokens.append(t)
                    scores.append(0.0)
                    types.append(_CONTROL if special else _USER)
    else:
        assert tj is not None
        model_j = tj["model"]
        tokens = [str(p[0]) for p in model_j["vocab"]]
        scores = [float(p[1]) for p in model_j["vocab"]]
        types = [_NORMAL] * len(tokens)
        pieces = dict(enumerate(tokens))
        added = _added(tj, tc)
        for i, (t, _) in added.items():
            pieces[i] = t
        tokens = _table(d, pieces, "unigram")
        scores += [0.0] * (len(tokens) - len(scores))
        types += [_NORMAL] * (len(tokens) - len(types))
        for i, (_, special) in added.items():
            types[i] = _CONTROL if special else _USER
        unk = model_j.get("unk_id")
        if isinstance(unk, int) and 0 <= unk < len(tokens):
            types[unk] = _UNKNOWN
        import base64
        pc = _find(tj.get("normalizer"), "Precompiled")
        ms = _find(tj.get("pre_tokenizer"), "Metaspace") or {}
        scheme = ms.get("prepend_scheme", "always" if ms.get("add_prefix_space", True) else "never")
        norm = {"charsmap": base64.b64decode(pc["precompiled_charsmap"]) if pc else b"",
                "add_prefix": scheme != "never", "remove_ws": True}
    lookup: dict[str, int] = {}
    for i, t in enumerate(tokens):
        lookup.setdefault(t, i)
    ids = {k: lookup.get(v) for k, v in names.items()}
    unk_ids = [i for i, ty in enumerate(types) if ty == _UNKNOWN]
    if ids["unk"] is None and unk_ids:
        ids["unk"] = unk_ids[0]
    if ids["unk"] is None:
        raise CheckpointError(f"{d}: the unigram vocabulary has no unknown token")
    types[ids["unk"]] = _UNKNOWN
    for k in ("cls", "pad", "sep", "mask"):
        j = ids[k]
        if j is not None and types[j] == _NORMAL:
            types[j] = _CONTROL
    return tokens, scores, types, ids, norm
