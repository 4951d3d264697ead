"""Encoder models: embedders and cross-encoder rerankers (BERT, XLM-RoBERTa,
nomic-bert) from GGUF files in llama.cpp's `bert` / `nomic-bert` layout.

``llmrt.Model(path)`` on such a file gives an :class:`EncoderModel`: it
embeds (``embed``) and reranks (``rerank``), and does not generate. Many
texts run as one native pass, end to end, padded nowhere; no KV cache is
kept. Pooling (mean, CLS, last token) is the file's ``pooling_type`` unless
asked otherwise; a reranker's head (``cls`` / ``cls.output``) scores the
first token of a (query, document) pair.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from .errors import GGUFError, UnsupportedModelError
from .families import ENCODER_FAMILIES, ENCODER_LAYER_TENSORS, ENCODER_TENSORS, EncoderFamily, encoder_roles_required
from .gguf_file import GGUFFile
from .gguf_loader import _check_layout, _tensor, _to_f32
from .rerank import RerankResult, check_request, ranked, relevance

# llama.cpp's pooling_type values
POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
PASS_TOKENS = 8192  # tokens a native call takes (the native side's rows a pass)


def is_encoder_file(path: str) -> bool:
    """Whether a GGUF file holds an encoder llmrt runs as one (a cheap look
    at its architecture; errors are left to the full load)."""
    try:
        return GGUFFile(path).metadata.get("general.architecture") in ENCODER_FAMILIES
    except Exception:  # noqa: BLE001 - the decoder loader reports a bad file
        return False


@dataclass
class EncoderFile:
    """A validated encoder GGUF: numbers, tensors by role, the head."""

    path: str
    arch: str
    family: EncoderFamily
    config: dict[str, float]
    tensors: dict[str, tuple[int, int, int, np.ndarray]]
    metadata: dict[str, Any]
    pooling: str           # mean, cls, last, rank (cls + the classifier), none (-> mean)
    n_ctx: int             # the longest text (positions)
    head: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None  # cls_w, cls_b, out_w, out_b
    reader: Any = None


def _int(meta: dict, name: str, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = meta.get(key, default)
    if v is None:
        raise GGUFError(f"{name}: missing metadata key {key!r}")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise GGUFError(f"{name}: {key} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def load_encoder(path: str) -> EncoderFile:
    """Open and validate an encoder file (untrusted: every key, shape and
    type is checked before native code sees a pointer)."""
    f = GGUFFile(path)
    meta, name = f.metadata, os.path.basename(path)
    arch = meta.get("general.architecture")
    if arch not in ENCODER_FAMILIES:
        raise UnsupportedModelError(f"{name}: architecture {arch!r} is not an encoder llmrt runs")
    fam = ENCODER_FAMILIES[arch]
    D = _int(meta, name, f"{arch}.embedding_length", 1, 1 << 15)
    F = _int(meta, name, f"{arch}.feed_forward_length", 1, 1 << 17)
    L = _int(meta, name, f"{arch}.block_count", 1, 512)
    H = _int(meta, name, f"{arch}.attention.head_count", 1, 1024)
    n_ctx = _int(meta, name, f"{arch}.context_length", 1, 1 << 20)
    eps = meta.get(f"{arch}.attention.layer_norm_epsilon", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (float, int)) or not 0 < eps < 1:
        raise GGUFError(f"{name}: {arch}.attention.layer_norm_epsilon must be in (0, 1)")
    if meta.get(f"{arch}.attention.causal", False):
        raise UnsupportedModelError(f"{name}: a causal {arch} model is not an encoder llmrt runs")
    if D % H or (fam.rotary and (D // H) % 2):
        raise GGUFError(f"{name}: {H} heads do not divide the width {D}")
    pool = _int(meta, name, f"{arch}.pooling_type", 0, 4, 0)
    emb = f.tensors.get("token_embd.weight")
    if emb is None or len(emb.shape) != 2:
        raise GGUFError(f"{name}: missing or malformed tensor 'token_embd.weight'")
    V = int(emb.shape[1])
    if not 1 <= V <= 1 << 22:
        raise GGUFError(f"{name}: a vocabulary of {V} tokens")

    def rows(gname: str, default: int) -> int:
        t = f.tensors.get(gname)
        return int(t.shape[1]) if t is not None and len(t.shape) == 2 else default

    P = 0 if fam.rotary else rows("position_embd.weight", n_ctx)
    T = rows("token_types.weight", 0)
    O = rows("cls.output.weight", 0)
    if (not fam.rotary and not 1 <= P <= 1 << 20) or T > 16 or O > 1 << 16:
        raise GGUFError(f"{name}: {P} positions, {T} token types, {O} classifier outputs")
    tensors = _encoder_tensors(f, name, fam, L, (D, F, V, P, T, O))
    head = None
    if "out_w" in tensors:
        if not all(k in tensors for k in ("cls_w", "cls_b", "out_b")):
            raise GGUFError(f"{name}: a classifier needs cls.weight, cls.bias and cls.output.*")
        head = (_f32(tensors.pop("cls_w")), _f32(tensors.pop("cls_b")).ravel(),
                _f32(tensors.pop("out_w")), _f32(tensors.pop("out_b")).ravel())
        if not all(np.all(np.isfinite(a)) for a in head):
            raise GGUFError(f"{name}: the classifier holds non-finite values")
    pooling = POOLING[pool]
    if pooling == "rank" and head is None:
        raise GGUFError(f"{name}: pooling_type rank without a classifier (cls.output)")
    cfg = {"n_embd": D, "n_ff": F, "n_layer": L, "n_head": H, "n_vocab": V, "n_pos": P,
           "n_types": T, "eps": float(eps), "swiglu": float(fam.swiglu)}
    if fam.rotary:
        base = meta.get(f"{arch}.rope.freq_base", 10000.0)
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not 1 < base < 1e12:
            raise GGUFError(f"{name}: {arch}.rope.freq_base must be > 1")
        cfg["rope_base"] = float(base)
    return EncoderFile(path, arch, fam, cfg, tensors, meta, pooling,
                       n_ctx if fam.rotary else min(n_ctx, P), head, f)


def _encoder_tensors(f: GGUFFile, name: str, fam: EncoderFamily, L: int,
                     dims: tuple[int, ...]) -> dict[str, tuple[int, int, int, np.ndarray]]:
    """Every tensor by role, each checked for its shape and type; the
    family's required ones present, no unknown one."""
    need = encoder_roles_required(fam)
    tensors: dict[str, tuple[int, int, int, np.ndarray]] = {}
    specs = [(r, g, sh) for r, g, sh in ENCODER_TENSORS]
    specs += [(f"blk.{i}.{r}", f"blk.{i}.{g}", sh) for i in range(L)
              for r, g, sh in ENCODER_LAYER_TENSORS]
    known = set()
    for role, gname, shape in specs:
        known.add(gname)
        t = f.tensors.get(gname)
        if t is None:
            if role.split(".")[-1] in need:
                raise GGUFError(f"{name}: missing tensor {gname!r}")
            continue
        tensors[role] = _tensor(f, t, shape(*dims))
    extra = sorted(set(f.tensors) - known)
    if extra:
        raise UnsupportedModelError(f"{name}: tensors llmrt does not know for {fam.arch}: "
                                    f"{', '.join(extra[:5])}")
    _check_layout(f)
    for i in range(L):  # a fused layer is fused throughout
        if f"blk.{i}.wqkv" in tensors and f"blk.{i}.wq" in tensors:
            raise GGUFError(f"{name}: layer {i} holds both attn_qkv and attn_q")
        if f"blk.{i}.wqkv" not in tensors and f"blk.{i}.wq" not in tensors:
            raise GGUFError(f"{name}: layer {i} has no attention weights")
    return tensors


def _f32(t: tuple[int, int, int, np.ndarray]) -> np.ndarray:
    type_id, rows, cols, buf = t
    return _to_f32(buf, type_id, rows * cols).reshape(rows, cols)


def _items(texts: Any) -> tuple[list[Any], bool]:
    """A text, a list of ids, or a list of either -> (items, single)."""
    single = isinstance(texts, str) or (
        isinstance(texts, (list, tuple, np.ndarray)) and len(texts) > 0 and
        not isinstance(texts[0], (str, list, tuple, np.ndarray)))
    items = [texts] if single else list(texts)
    if not items:
        raise ValueError("texts is empty")
    return items, single


class Encoder:
    """The native encoder, its tokenizer and head: what EncoderModel runs."""

    def __init__(self, ef: EncoderFile, tokenizer: Any, device: str, threads: int,
                 int8_activations: bool):
        self.file = ef
        self.tokenizer = tokenizer
        opts = _core.ModelOptions()
        opts.device = device
        opts.threads = threads
        opts.int8_activations = int8_activations
        # a text's states the same bits alone or among others (a lone token
        # through the several-token kernels too)
        opts.batch_invariant = True
        self.native = _core.EncoderModel(ef.config, ef.tensors, opts)
        self.n_embd = int(ef.config["n_embd"])
        self.n_ctx = ef.n_ctx
        self._lock = threading.Lock()

    # ---- tokens ----
    def _truncate(self, ids: list[int], types: list[int], truncate: bool) -> tuple[list, list]:
        if len(ids) <= self.n_ctx:
            return ids, types
        if not truncate:
            raise ValueError(f"a text of {len(ids)} tokens is longer than the model's "
                             f"{self.n_ctx} (truncate=True cuts it)")
        # keep the closing special token, as the Hugging Face tokenizers do
        return ids[:self.n_ctx - 1] + ids[-1:], types[:self.n_ctx - 1] + types[-1:]

    def token_ids(self, item: Any, add_special: bool, truncate: bool) -> tuple[list[int], list[int]]:
        if isinstance(item, str):
            ids = self.tokenizer.encode(item, add_special=add_special)
        else:
            ids = [int(i) for i in item]
            bad = [i for i in ids if not 0 <= i < self.native.n_vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the vocabulary "
                                 f"(0..{self.native.n_vocab - 1})")
        if not ids:
            raise ValueError("a text of no tokens (pass add_special=True or a non-empty text)")
        return self._truncate(ids, [0] * len(ids), truncate)

    # ---- the forward pass ----
    def hidden_states(self, seqs: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """(ids, types) per text -> each text's final hidden states (T, n_embd),
        the texts in native calls of up to PASS_TOKENS tokens."""
        out: list[np.ndarray] = []
        i = 0
        while i < len(seqs):
            j, n = i, 0
            while j < len(seqs) and (j == i or n + len(seqs[j][0]) <= PASS_TOKENS):
                n += len(seqs[j][0])
                j += 1
            part = seqs[i:j]
            lens = np.array([len(s[0]) for s in part], np.int32)
            ids = np.concatenate([np.asarray(s[0], np.int32) for s in part])
            types = np.concatenate([np.asarray(s[1], np.int32) for s in part])
            pos = np.concatenate([np.arange(k, dtype=np.int32) for k in lens])
            if self.native.n_types == 0:
                types[:] = 0
            with self._lock:
                h = self.native.encode(ids, types, pos, lens)
            out += np.split(h, np.cumsum(lens)[:-1])
            i = j
        return out

    def pool(self, h: np.ndarray, pooling: str) -> np.ndarray:
        if pooling == "mean":
            return h.mean(axis=0, dtype=np.float64).astype(np.float32)
        if pooling in ("cls", "rank"):
            return h[0]
        if pooling == "last":
            return h[-1]
        raise ValueError(f"pooling must be 'mean', 'cls' or 'last', got {pooling!r}")

    def classify(self, first: np.ndarray) -> np.ndarray:
        """The classifier's logits of first-token states (n, D) -> (n, outputs)."""
        if self.file.head is None:
            raise ValueError(f"{os.path.basename(self.file.path)} has no classification head: "
                             f"it embeds but does not rerank")
        cw, cb, ow, ob = self.file.head
        return (np.tanh(first.astype(np.float64) @ cw.T + cb) @ ow.T + ob).astype(np.float32)


class EncoderModel:
    """An embedding or reranking model (BERT, XLM-RoBERTa, nomic-bert).

    activations="int8" (default): quantized weights against 8-bit activation
    blocks, and F16 weights (where the CPU's 16-bit integer products are the
    faster: AVX-512 VNNI, AVX2) as 14-bit integers against 13-bit activation
    blocks of 64; "f32" keeps activations in float32 (the exact float product
    for F16 weights, slower).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 activations: str = "int8", **unused: Any):
        from .tokenizer import Tokenizer
        from .utils import check_device
        self.path = os.fspath(path)
        check_device(device, activations)
        if threads is None:
            from .utils import physical_cores
            threads = physical_cores()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        ef = load_encoder(self.path)
        self.arch = ef.arch
        self.metadata = ef.metadata
        self.device = device
        self.activations = activations
        # WordPiece or unigram (llmrt.tokenizer_encoder): encode_pair for rerankers
        self.tokenizer: Any = Tokenizer.from_metadata(ef.metadata, os.path.basename(self.path))
        if self.tokenizer.vocab_size > int(ef.config["n_vocab"]):
            raise GGUFError(f"{os.path.basename(self.path)}: tokenizer has "
                            f"{self.tokenizer.vocab_size} tokens but the model only "
                            f"{int(ef.config['n_vocab'])}")
        self.encoder = Encoder(ef, self.tokenizer, device, threads, activations == "int8")
        self.pooling = ef.pooling
        self.context_length = ef.n_ctx
        self.config = dict(ef.config)
        self.vision = None

    def __repr__(self) -> str:
        return (f"EncoderModel({os.path.basename(self.path)!r}, arch={self.arch!r}, "
                f"pooling={self.pooling!r}, device={self.device!r})")

    @property
    def n_embd(self) -> int:
        return self.encoder.n_embd

    @property
    def is_reranker(self) -> bool:
        return self.encoder.file.head is not None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def embed(self, texts: str | Sequence[str] | Sequence[Sequence[int]], pooling: str | None = None,
              normalize: bool = True, add_special: bool = True, truncate: bool = True) -> np.ndarray:
        """Embeddings of texts (or token id lists) -> float32 (len(texts),
        n_embd) (one row for a single text: (1, n_embd)): every token's final
        hidden state pooled as the file says (its pooling_type: mean, CLS or
        last token; or pooling=...), L2-normalised unless normalize=False.
        Texts longer than the model's positions are cut (truncate=False: a
        ValueError)."""
        items, _ = _items(texts)
        pool = pooling or (self.pooling if self.pooling in ("mean", "cls", "last", "rank")
                           else "mean")
        seqs = [self.encoder.token_ids(t, add_special, truncate) for t in items]
        hs = self.encoder.hidden_states(seqs)
        out = np.stack([self.encoder.pool(h, pool) for h in hs]).astype(np.float32)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def hidden_states(self, text: str | Sequence[int], add_special: bool = True) -> np.ndarray:
        """Every token's final hidden state of one text (T, n_embd)."""
        return self.encoder.hidden_states([self.encoder.token_ids(text, add_special, True)])[0]

    def rerank_logits(self, query: str, documents: Sequence[str], truncate: bool = True) -> np.ndarray:
        """The classifier's raw logits of each (query, document) pair
        (len(documents), outputs)."""
        check_request(query, documents, None)
        if not documents:
            return np.zeros((0, 1), np.float32)
        seqs = []
        for d in documents:
            ids, types = self.tokenizer.encode_pair(query, d, max_length=self.context_length
                                                    if truncate else None)
            if len(ids) > self.context_length:
                raise ValueError(f"a (query, document) pair of {len(ids)} tokens is longer than "
                                 f"the model's {self.context_length} (truncate=True cuts it)")
            seqs.append((ids, types))
        hs = self.encoder.hidden_states(seqs)
        return self.encoder.classify(np.stack([h[0] for h in hs]))

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               return_documents: bool = False, truncate: bool = True) -> list[RerankResult]:
        """Documents ranked by relevance to the query (a cross-encoder's
        score of each pair: the sigmoid of its one logit, or the probability
        of class 1 of several), best first; the top_n of them."""
        check_request(query, documents, top_n)
        logits = self.rerank_logits(query, documents, truncate)
        scores = relevance(logits)
        return ranked(scores, documents, top_n, return_documents)

    def generate(self, *a: Any, **k: Any) -> Any:
        raise TypeError(f"{os.path.basename(self.path)} is an encoder ({self.arch}): it embeds "
                        f"and reranks; it does not generate text")

    chat = submit = logits = perplexity = generate
