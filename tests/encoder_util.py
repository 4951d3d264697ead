"""Tiny random encoder checkpoints (BERT, XLM-RoBERTa, nomic-bert) written
with numpy under the names published checkpoints use, and an independent
float64 forward over those names (Hugging Face's conventions)."""

from __future__ import annotations

import json
from math import erf

import numpy as np

ENC_TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
            "Numbers like 12345 and 678 appear; symbols #, $, % too! Café naïve résumé. "
            "Berlin, Paris, Tokyo: 東京 and 北京. Search engines rank documents by relevance "
            "to a query; embeddings place similar texts close together. ") * 20


def _save(d, config: dict, weights: dict) -> dict:
    from safetensors.numpy import save_file
    d.mkdir(parents=True, exist_ok=True)
    w = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config))
    return w


def wordpiece_files(d, lowercase: bool = True) -> int:
    """A WordPiece vocabulary trained on ENC_TEXT, saved as a BERT checkpoint
    keeps it (vocab.txt, tokenizer.json, tokenizer_config.json) -> its size."""
    from tokenizers import BertWordPieceTokenizer
    tk = BertWordPieceTokenizer(lowercase=lowercase)
    tk.train_from_iterator([ENC_TEXT], vocab_size=300, min_frequency=1,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    d.mkdir(parents=True, exist_ok=True)
    tk.save(str(d / "tokenizer.json"))
    tk.save_model(str(d))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": lowercase, "tokenizer_class": "BertTokenizer", "model_max_length": 64,
         "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]",
         "mask_token": "[MASK]"}))
    return tk.get_vocab_size()


def _ln(rng, D):
    return 1 + 0.1 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)


def bert_checkpoint(root, V: int, D=64, F=96, L=2, H=4, P=40, T=2, classifier=0,
                    roberta=False, seed=0) -> dict:
    """A random BertModel (or XLMRobertaModel with roberta=True; with
    classifier=n, the ...ForSequenceClassification of n labels) in root."""
    rng = np.random.default_rng(seed)
    arch = ("XLMRoberta" if roberta else "Bert") + ("ForSequenceClassification" if classifier
                                                   else "Model")
    pre = ("roberta." if roberta else "bert.") if classifier else ""
    c = dict(architectures=[arch], model_type="xlm-roberta" if roberta else "bert",
             vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
             num_attention_heads=H, max_position_embeddings=P + (2 if roberta else 0),
             type_vocab_size=T, layer_norm_eps=1e-12, hidden_act="gelu",
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             pad_token_id=1 if roberta else 0, position_embedding_type="absolute")
    if classifier:
        c["num_labels"] = classifier
        c["id2label"] = {str(i): f"LABEL_{i}" for i in range(classifier)}
        c["label2id"] = {f"LABEL_{i}": i for i in range(classifier)}
    w = {}
    e = pre + "embeddings."
    w[e + "word_embeddings.weight"] = 0.5 * rng.standard_normal((V, D))
    w[e + "position_embeddings.weight"] = 0.5 * rng.standard_normal((c["max_position_embeddings"], D))
    w[e + "token_type_embeddings.weight"] = 0.5 * rng.standard_normal((T, D))
    w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"] = _ln(rng, D)
    for i in range(L):
        p = f"{pre}encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense"):
            w[p + n + ".weight"] = rng.standard_normal((D, D)) / np.sqrt(D)
            w[p + n + ".bias"] = 0.1 * rng.standard_normal(D)
        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"] = \
            _ln(rng, D)
        w[p + "intermediate.dense.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
        w[p + "intermediate.dense.bias"] = 0.1 * rng.standard_normal(F)
        w[p + "output.dense.weight"] = rng.standard_normal((D, F)) / np.sqrt(F)
        w[p + "output.dense.bias"] = 0.1 * rng.standard_normal(D)
        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"] = _ln(rng, D)
    if classifier:
        a, b = (("classifier.dense", "classifier.out_proj") if roberta else
                (pre + "pooler.dense", "classifier"))
        w[a + ".weight"] = rng.standard_normal((D, D)) / np.sqrt(D)
        w[a + ".bias"] = 0.1 * rng.standard_normal(D)
        w[b + ".weight"] = rng.standard_normal((classifier, D)) / np.sqrt(D)
        w[b + ".bias"] = 0.1 * rng.standard_normal(classifier)
    elif not roberta:
        w["pooler.dense.weight"] = rng.standard_normal((D, D)) / np.sqrt(D)
        w["pooler.dense.bias"] = 0.1 * rng.standard_normal(D)
    return dict(config=c, weights=_save(root, c, w), prefix=pre)


def nomic_checkpoint(root, V: int, D=64, F=96, L=2, H=4, T=2, seed=0) -> dict:
    """A random NomicBertModel (nomic-embed-text's remote-code layout) in root."""
    rng = np.random.default_rng(seed)
    c = dict(architectures=["NomicBertModel"], model_type="nomic_bert", vocab_size=V, n_embd=D,
             n_inner=F, n_layer=L, n_head=H, n_positions=128, type_vocab_size=T,
             layer_norm_epsilon=1e-12, rotary_emb_base=1000, rotary_emb_fraction=1.0,
             rotary_emb_interleaved=False, prenorm=False, qkv_proj_bias=False,
             mlp_fc1_bias=False, mlp_fc2_bias=False, activation_function="swiglu")
    w = {"embeddings.word_embeddings.weight": 0.5 * rng.standard_normal((V, D)),
         "embeddings.token_type_embeddings.weight": 0.5 * rng.standard_normal((T, D))}
    w["emb_ln.weight"], w["emb_ln.bias"] = _ln(rng, D)
    for i in range(L):
        p = f"encoder.layers.{i}."
        w[p + "attn.Wqkv.weight"] = rng.standard_normal((3 * D, D)) / np.sqrt(D)
        w[p + "attn.out_proj.weight"] = rng.standard_normal((D, D)) / np.sqrt(D)
        w[p + "mlp.fc11.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
        w[p + "mlp.fc12.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
        w[p + "mlp.fc2.weight"] = rng.standard_normal((D, F)) / np.sqrt(F)
        w[p + "norm1.weight"], w[p + "norm1.bias"] = _ln(rng, D)
        w[p + "norm2.weight"], w[p + "norm2.bias"] = _ln(rng, D)
    return dict(config=c, weights=_save(root, c, w), prefix="")


def _layernorm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


_erf = np.vectorize(erf)


def _attention(q, k, v, H):
    T, D = q.shape
    hd = D // H
    out = np.empty_like(q)
    for h in range(H):
        s = slice(h * hd, (h + 1) * hd)
        sc = q[:, s] @ k[:, s].T / np.sqrt(hd)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        out[:, s] = (p / p.sum(-1, keepdims=True)) @ v[:, s]
    return out


def _rope_neox(x, H, base):
    T, D = x.shape
    hd = D // H
    half = hd // 2
    inv = base ** (-np.arange(half) * 2.0 / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x = x.reshape(T, H, hd).copy()
    a, b = x[..., :half].copy(), x[..., half:].copy()
    x[..., :half] = a * cos[:, None] - b * sin[:, None]
    x[..., half:] = b * cos[:, None] + a * sin[:, None]
    return x.reshape(T, D)


def encoder_reference(ck: dict, ids, types=None) -> np.ndarray:
    """float64 hidden states (T, D) of one text, from the checkpoint's own names."""
    c, pre = ck["config"], ck["prefix"]
    W = {k: v.astype(np.float64) for k, v in ck["weights"].items()}
    ids = np.asarray(ids)
    types = np.zeros_like(ids) if types is None else np.asarray(types)
    T = len(ids)
    nomic = c["architectures"][0] == "NomicBertModel"
    e = pre + "embeddings."
    x = W[e + "word_embeddings.weight"][ids] + W[e + "token_type_embeddings.weight"][types]
    if nomic:
        x = _layernorm(x, W["emb_ln.weight"], W["emb_ln.bias"], c["layer_norm_epsilon"])
        H, L, eps = c["n_head"], c["n_layer"], c["layer_norm_epsilon"]
        for i in range(L):
            p = f"encoder.layers.{i}."
            q, k, v = np.split(x @ W[p + "attn.Wqkv.weight"].T, 3, axis=1)
            q, k = _rope_neox(q, H, c["rotary_emb_base"]), _rope_neox(k, H, c["rotary_emb_base"])
            a = _attention(q, k, v, H) @ W[p + "attn.out_proj.weight"].T
            x = _layernorm(x + a, W[p + "norm1.weight"], W[p + "norm1.bias"], eps)
            up, gate = x @ W[p + "mlp.fc11.weight"].T, x @ W[p + "mlp.fc12.weight"].T
            y = (up * gate / (1 + np.exp(-gate))) @ W[p + "mlp.fc2.weight"].T
            x = _layernorm(x + y, W[p + "norm2.weight"], W[p + "norm2.bias"], eps)
        return x
    off = c["pad_token_id"] + 1 if c["model_type"] == "xlm-roberta" else 0
    x = x + W[e + "position_embeddings.weight"][off + np.arange(T)]
    eps, H = c["layer_norm_eps"], c["num_attention_heads"]
    x = _layernorm(x, W[e + "LayerNorm.weight"], W[e + "LayerNorm.bias"], eps)
    for i in range(c["num_hidden_layers"]):
        p = f"{pre}encoder.layer.{i}."

        def lin(n, h):
            return h @ W[p + n + ".weight"].T + W[p + n + ".bias"]
        a = _attention(lin("attention.self.query", x), lin("attention.self.key", x),
                       lin("attention.self.value", x), H)
        x = _layernorm(x + lin("attention.output.dense", a),
                       W[p + "attention.output.LayerNorm.weight"],
                       W[p + "attention.output.LayerNorm.bias"], eps)
        u = lin("intermediate.dense", x)
        u = 0.5 * u * (1 + _erf(u / np.sqrt(2)))
        x = _layernorm(x + lin("output.dense", u), W[p + "output.LayerNorm.weight"],
                       W[p + "output.LayerNorm.bias"], eps)
    return x


def classifier_reference(ck: dict, h0: np.ndarray) -> np.ndarray:
    """A sequence classifier's logits from the first token's hidden state."""
    W, pre = ck["weights"], ck["prefix"]
    roberta = "classifier.dense.weight" in W
    a, b = ("classifier.dense", "classifier.out_proj") if roberta else \
        (pre + "pooler.dense", "classifier")
    z = np.tanh(h0 @ W[a + ".weight"].T.astype(np.float64) + W[a + ".bias"])
    return z @ W[b + ".weight"].T.astype(np.float64) + W[b + ".bias"]
