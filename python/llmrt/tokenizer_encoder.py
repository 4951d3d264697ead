"""Tokenizers of encoder models, from GGUF metadata in llama.cpp's layout.

* ``tokenizer.ggml.model == "bert"``: WordPiece (BERT, nomic-bert). llama.cpp
  stores the vocabulary in "phantom space" form: a word-initial piece
  ``hello`` is ``\\u2581hello``, a continuation ``##llo`` is ``llo``, control
  tokens (``[CLS]``) are as they are. Whether text is lowercased is
  ``tokenizer.ggml.lowercase`` (an llmrt key; without it, a vocabulary with
  (almost) no uppercase word pieces is taken as uncased), accents are stripped as
  ``tokenizer.ggml.strip_accents`` says (default: when lowercasing), CJK
  characters are split unless ``tokenizer.ggml.handle_chinese_chars`` is false.
* ``tokenizer.ggml.model == "t5"``: SentencePiece unigram (XLM-RoBERTa, T5),
  normalized by ``tokenizer.ggml.precompiled_charsmap``.

Both are built with Hugging Face ``tokenizers`` as transformers builds
BertTokenizerFast and XLMRobertaTokenizerFast (WordPiece / Unigram model,
normalizer, pre-tokenizer, the special tokens matched in text, a template
adding them), so ids, pair layouts, truncation and offsets are those of the
Hugging Face fast tokenizer by construction. Pairs are
``[CLS] a [SEP] b [SEP]`` (types 0 then 1) and ``<s> a </s></s> b </s>`` (all 0):
bos, a, eos, the separator where ``tokenizer.ggml.add_sep_token``, b, eos.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .errors import GGUFError
from .tokenizer import CONTROL, NORMAL, TOKENIZER_MODELS, UNKNOWN, UNUSED, USER_DEFINED, Tokenizer

_PHANTOM = "\u2581"


def _id(meta: dict, key: str, n: int, path: str) -> int | None:
    v = meta.get(f"tokenizer.ggml.{key}")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
        raise GGUFError(f"{path}: tokenizer.ggml.{key}={v!r} is not a valid token id "
                        f"(vocabulary of {n})")
    return int(v)


def _flag(meta: dict, key: str, default: Any) -> Any:
    v = meta.get(f"tokenizer.ggml.{key}")
    return default if v is None else bool(v)


class EncoderTokenizer(Tokenizer):
    """Shared by the encoder tokenizers: a ``tokenizers.Tokenizer`` with the
    model's special-token template."""

    _hf: Any
    _pair_types: bool  # the second text of a pair has token type 1
    cls_id: int | None
    sep_id: int | None
    unk_id: int
    mask_id: int | None

    def _setup_specials(self, meta: dict, bos: int | None, eos: int | None,
                        default_sep: bool) -> None:
        """bos/eos framing each text, the separator between pair texts."""
        self.bos_id, self.eos_id = bos, eos
        self.add_bos = _flag(meta, "add_bos_token", bos is not None) and bos is not None
        self.add_eos = _flag(meta, "add_eos_token", eos is not None) and eos is not None
        self.add_sep = _flag(meta, "add_sep_token", default_sep) and self.sep_id is not None
        self._lock = threading.Lock()

    def _template(self, spelled: list[str]) -> Any:
        from tokenizers import processors
        used: dict[str, int] = {}

        def tok(i: int | None, on: bool, type_id: int) -> list[str]:
            if i is None or not on:
                return []
            t = spelled[i]
            # the template's name for the token ("x:1" syntax): its text where that parses
            if not t or ":" in t or t[0] == "$" or any(c.isspace() for c in t):
                t = f"[special{i}]"
            used[t] = i
            return [f"{t}:{type_id}"]
        t1 = int(self._pair_types)
        single = tok(self.bos_id, self.add_bos, 0) + ["$A:0"] + tok(self.eos_id, self.add_eos, 0)
        pair = (tok(self.bos_id, self.add_bos, 0) + ["$A:0"] + tok(self.eos_id, self.add_eos, 0)
                + tok(self.sep_id, self.add_sep, 0) + [f"$B:{t1}"] + tok(self.eos_id, self.add_eos, t1))
        return processors.TemplateProcessing(single=single, pair=pair,
                                             special_tokens=list(used.items()))

    # -- encoding ---------------------------------------------------------------------
    # One tokenizers.Tokenizer, its truncation set for a call and unset after:
    # every call holds the lock, so that none sees another's truncation.
    @staticmethod
    def _text(text: Any) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return text

    def _run(self, fn, max_length: int | None = None, strategy: str = "longest_first") -> Any:
        if max_length is not None and (isinstance(max_length, bool) or
                                       not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int, not {max_length!r}")
        with self._lock:
            if max_length is None:
                return fn(self._hf)
            self._hf.enable_truncation(max_length, strategy=strategy)
            try:
                return fn(self._hf)
            finally:
                self._hf.no_truncation()

    @staticmethod
    def _room(max_length: int | None, n_special: int) -> None:
        # (the tokenizers library would leave such a sequence uncut)
        if isinstance(max_length, int) and 0 < max_length < n_special:
            raise ValueError(f"max_length={max_length} leaves no room for the {n_special} "
                             "special tokens")

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of text; special-token text such as ``[SEP]`` maps to its
        id. With add_special, the model's framing (``[CLS] .. [SEP]``, ``<s> .. </s>``)."""
        text = self._text(text)
        return list(self._run(lambda hf: hf.encode(text, add_special_tokens=add_special)).ids)

    def _encode(self, text: str) -> list[int]:
        return self.encode(text, add_special=False)

    def encode_with_offsets(self, text: str, add_special: bool = True
                            ) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character offsets in text, as the
        Hugging Face fast tokenizer gives them ((0, 0) for added special tokens)."""
        text = self._text(text)
        e = self._run(lambda hf: hf.encode(text, add_special_tokens=add_special))
        return list(e.ids), [(int(s), int(t)) for s, t in e.offsets]

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None,
                     add_special: bool = True) -> list[list[int]]:
        """Ids of each text (the tokenizers library's batch encoding); with
        max_length, cut to at most that many ids, the closing special token kept."""
        texts = [self._text(t) for t in texts]
        self._room(max_length, add_special and self._hf.num_special_tokens_to_add(False))
        try:
            enc = self._run(lambda hf: hf.encode_batch(texts, add_special_tokens=add_special),
                            max_length)
        except ValueError:
            raise
        except Exception as e:  # max_length below the special tokens' count
            raise ValueError(f"cannot truncate to max_length={max_length}: {e}") from None
        return [list(e.ids) for e in enc]

    def encode_pair(self, a: str, b: str, max_length: int | None = None
                    ) -> tuple[list[int], list[int]]:
        """(ids, token type ids) of a text pair, laid out as the Hugging Face
        tokenizer does. With max_length, the second text is cut (HF's
        truncation="only_second"), or, where the first alone does not fit, the
        longer of the two in turn ("longest_first")."""
        return self.encode_pair_batch([(a, b)], max_length)[0]

    def encode_pair_batch(self, pairs: Sequence[tuple[str, str]], max_length: int | None = None
                          ) -> list[tuple[list[int], list[int]]]:
        """encode_pair of each pair (one batch through the tokenizers library)."""
        inputs = [(self._text(a), self._text(b)) for a, b in pairs]
        self._room(max_length, self._hf.num_special_tokens_to_add(True))
        try:
            enc = self._run(lambda hf: hf.encode_batch(inputs), max_length, "only_second")
        except ValueError:
            raise
        except Exception:  # a first text too long for only_second: pair by pair
            enc = []
            for p in inputs:
                try:
                    enc.append(self._run(lambda hf, p=p: hf.encode(*p), max_length, "only_second"))
                except Exception:
                    try:
                        enc.append(self._run(lambda hf, p=p: hf.encode(*p), max_length, "longest_first"))
                    except Exception as e:
                        raise ValueError(f"cannot truncate a pair to max_length={max_length}: "
                                         f"{e}") from None
        return [(list(e.ids), list(e.type_ids)) for e in enc]

    def _strip_first_space(self) -> bool:
        return True


def _unphantom(tok: str, ty: int) -> str:
    """A llama.cpp phantom-space WordPiece token -> its Hugging Face spelling."""
    if ty == CONTROL:
        return tok
    if tok.startswith(_PHANTOM):
        return tok[1:]
    if len(tok) > 1 and tok[0] == "[" and tok[-1] == "]":  # older files: "[unused0]" as is
        return tok
    return "##" + tok


def _cleanup(piece: str) -> str:
    """The WordPiece decoder's per-token clean-up: no space before . ? ! ,"""
    return piece[1:] if piece in (" .", " ?", " !", " ,") else piece


class WordPieceTokenizer(EncoderTokenizer):
    """BERT's WordPiece (``tokenizer.ggml.model == "bert"``)."""

    def __init__(self, tokens: list[str], types: list[int], meta: dict, path: str = "model"):
        super().__init__(tokens, types, meta, path)
        from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        n = len(tokens)
        spelled = [_unphantom(t, ty) for t, ty in zip(tokens, types)]
        unk_id = _id(meta, "unknown_token_id", n, path)
        if unk_id is None:
            unk = [i for i, ty in enumerate(types) if ty == UNKNOWN] or \
                [i for i, t in enumerate(spelled) if t == "[UNK]"]
            if not unk:
                raise GGUFError(f"{path}: WordPiece vocabulary without an unknown token "
                                "(tokenizer.ggml.unknown_token_id)")
            unk_id = unk[0]
        self.unk_id = unk_id
        self.cls_id = _id(meta, "cls_token_id", n, path)
        if self.cls_id is None:
            self.cls_id = self.bos_id
        self.sep_id = _id(meta, "seperator_token_id", n, path)
        if self.sep_id is None:
            self.sep_id = self.eos_id
        if self.cls_id is None or self.sep_id is None:
            raise GGUFError(f"{path}: WordPiece vocabulary without [CLS] / [SEP] ids "
                            "(tokenizer.ggml.bos_token_id / seperator_token_id)")
        self.mask_id = _id(meta, "mask_token_id", n, path)
        self._pair_types = int(meta.get("tokenizer.ggml.token_type_count") or 2) >= 2
        self._setup_specials(meta, self.cls_id, self.sep_id, default_sep=False)

        # uncased unless a fair number of word pieces (a cased vocabulary has
        # thousands) hold uppercase letters
        words = [t for i, t in enumerate(spelled)
                 if types[i] == NORMAL and not t.startswith("##") and not t.startswith("[")]
        upper = sum(t != t.lower() for t in words)
        lowercase = _flag(meta, "lowercase", upper < max(2, len(words) // 1000))
        self.lowercase = bool(lowercase)
        strip = meta.get("tokenizer.ggml.strip_accents")
        vocab: dict[str, int] = {}
        for i, t in enumerate(spelled):
            if t:
                vocab.setdefault(t, i)
        try:
            hf = HFTokenizer(models.WordPiece(vocab, unk_token=spelled[self.unk_id],
                                              max_input_chars_per_word=100))
        except Exception as e:
            raise GGUFError(f"{path}: invalid WordPiece vocabulary ({e})") from None
        hf.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=_flag(meta, "handle_chinese_chars", True),
            strip_accents=None if strip is None else bool(strip), lowercase=self.lowercase)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.decoder = decoders.WordPiece(prefix="##")
        specials = {i for i, ty in enumerate(types) if ty in (CONTROL, UNKNOWN)}
        specials |= {self.unk_id, self.cls_id, self.sep_id} | \
            ({self.mask_id} if self.mask_id is not None else set()) | \
            ({self.pad_id} if self.pad_id is not None else set())
        self.special_ids = frozenset(self.special_ids | {i for i in specials if types[i] != UNUSED})
        added = [AddedToken(spelled[i], special=True, normalized=False)
                 for i in sorted(self.special_ids) if spelled[i]]
        added += [AddedToken(spelled[i], special=False, normalized=True)
                  for i, ty in enumerate(types) if ty == USER_DEFINED and spelled[i]]
        hf.add_special_tokens(added)
        hf.post_processor = self._template(spelled)
        self._hf = hf
        self._bytes = []
        for i, t in enumerate(spelled):
            if i in self.special_ids or types[i] == USER_DEFINED or not t.startswith("##"):
                self._bytes.append(_cleanup(" " + t).encode("utf-8"))
            else:
                self._bytes.append(t[2:].encode("utf-8"))


def _charsmap(v: Any, path: str) -> bytes:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    try:
        return bytes(bytearray(int(x) for x in v))
    except (TypeError, ValueError):
        raise GGUFError(f"{path}: tokenizer.ggml.precompiled_charsmap is not a byte array") from None


class UnigramTokenizer(EncoderTokenizer):
    """SentencePiece unigram with a precompiled normalizer (``tokenizer.ggml.model
    == "t5"``: XLM-RoBERTa's vocabulary as llama.cpp writes it)."""

    def __init__(self, tokens: list[str], types: list[int], meta: dict, path: str = "model"):
        super().__init__(tokens, types, meta, path)
        from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        n = len(tokens)
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            raise GGUFError(f"{path}: unigram vocabulary without tokenizer.ggml.scores")
        if len(scores) != n:
            raise GGUFError(f"{path}: tokenizer.ggml.scores has {len(scores)} entries for "
                            f"{n} tokens")
        try:
            fscores = [float(s) for s in scores]
        except (TypeError, ValueError):
            raise GGUFError(f"{path}: tokenizer.ggml.scores must be numbers") from None
        types = list(types)
        unk_id = _id(meta, "unknown_token_id", n, path)
        if unk_id is None:
            unk = [i for i, ty in enumerate(types) if ty == UNKNOWN]
            if not unk:
                raise GGUFError(f"{path}: unigram vocabulary without an unknown token "
                                "(tokenizer.ggml.unknown_token_id)")
            unk_id = unk[0]
        self.unk_id = unk_id
        self.mask_id = _id(meta, "mask_token_id", n, path)
        self.sep_id = _id(meta, "seperator_token_id", n, path)
        if self.sep_id is None:
            self.sep_id = self.eos_id
        self.cls_id = _id(meta, "cls_token_id", n, path)
        if self.cls_id is None:
            self.cls_id = self.bos_id
        self._pair_types = int(meta.get("tokenizer.ggml.token_type_count") or 1) >= 2
        self._setup_specials(meta, self.bos_id, self.eos_id, default_sep=self.bos_id is not None)

        spelled = list(tokens)
        if self.mask_id is not None and types[self.mask_id] == UNUSED:
            # llama.cpp's sentencepiece path leaves XLM-R's <mask> as a "[PAD..]" slot
            spelled[self.mask_id], types[self.mask_id] = "<mask>", CONTROL
        used = [s for i, s in enumerate(fscores) if types[i] not in (UNUSED, CONTROL, UNKNOWN)]
        floor = min(used) if used else 0.0
        vocab: list[tuple[str, float]] = []
        for i, t in enumerate(spelled):
            if types[i] == UNUSED and i != self.unk_id:
                # never matched (text reaching the model has no spaces), scored so
                # that the unknown token's penalty (min score - 10) is unchanged
                vocab.append((f" <unused{i}> ", floor))
            else:
                vocab.append((t, fscores[i]))
        try:
            hf = HFTokenizer(models.Unigram(vocab, self.unk_id, byte_fallback=False))
        except Exception as e:
            raise GGUFError(f"{path}: invalid unigram vocabulary ({e})") from None
        charsmap = meta.get("tokenizer.ggml.precompiled_charsmap")
        if charsmap is not None and len(charsmap):
            try:
                hf.normalizer = normalizers.Precompiled(_charsmap(charsmap, path))
            except GGUFError:
                raise
            except Exception as e:
                raise GGUFError(f"{path}: invalid tokenizer.ggml.precompiled_charsmap ({e})") from None
        self.add_space_prefix = bool(_flag(meta, "add_space_prefix", True))
        scheme = "always" if self.add_space_prefix else "never"
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=_PHANTOM, prepend_scheme=scheme)])
        hf.decoder = decoders.Metaspace(replacement=_PHANTOM, prepend_scheme=scheme)
        special = {i for i, ty in enumerate(types) if ty in (CONTROL, UNKNOWN)} | {self.unk_id}
        self.special_ids = frozenset(special)
        added = [AddedToken(spelled[i], special=True, normalized=False)
                 for i in sorted(special) if spelled[i]]
        added += [AddedToken(spelled[i], special=False, normalized=False)
                  for i, ty in enumerate(types) if ty == USER_DEFINED and spelled[i]]
        hf.add_special_tokens(added)
        hf.post_processor = self._template(spelled)
        self._hf = hf
        self._bytes = [(t if i in special else t.replace(_PHANTOM, " ")).encode("utf-8")
                       for i, t in enumerate(spelled)]

    def _strip_first_space(self) -> bool:
        return self.add_space_prefix


TOKENIZER_MODELS.update(bert=WordPieceTokenizer, t5=UnigramTokenizer)
