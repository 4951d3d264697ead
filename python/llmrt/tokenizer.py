"""Tokenizers built from a GGUF file's metadata.

* ``tokenizer.ggml.model == "gpt2"``: byte-level BPE through Hugging Face
  ``tokenizers``, splitting text the way the pre-tokenizer named by
  ``tokenizer.ggml.pre`` does.
* ``tokenizer.ggml.model == "llama"``: SentencePiece (BPE with byte fallback)
  through ``sentencepiece``, from a model proto written from the vocabulary.
* ``"bert"`` (WordPiece) and ``"t5"`` (SentencePiece unigram, XLM-RoBERTa):
  encoder models' tokenizers, in tokenizer_encoder.py.

Decoding goes through bytes: every token maps to the bytes it stands for, and
an incremental UTF-8 decoder emits text only once a character is complete, so
a stream never shows half of a multi-byte character.
"""

from __future__ import annotations

import codecs
import re
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import GGUFError, UnsupportedModelError

# GGUF token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# ---- pre-tokenizer splits, keyed by tokenizer.ggml.pre ----------------------------
# The GPT-2 pattern (what ByteLevel(use_regex=True) applies).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tiktoken's o200k_base split (gpt-4o, o200k_harmony of gpt-oss): cased words with
# their contractions, runs of 1-3 digits, punctuation runs taking trailing
# newlines and slashes
O200K_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
               r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
               r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS = r"\p{N}"

# name -> list of split patterns applied in order (each isolating its matches)
PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [_GPT2], "gpt2": [_GPT2], "gpt-2": [_GPT2], "mpt": [_GPT2], "olmo": [_GPT2],
    "jais": [_GPT2],
    # vocabularies trained with every digit on its own
    "smollm": [_DIGITS, _GPT2], "starcoder": [_DIGITS, _GPT2], "refact": [_DIGITS, _GPT2],
    "command-r": [_DIGITS, _GPT2], "codeshell": [_DIGITS, _GPT2], "exaone": [_DIGITS, _GPT2],
    "minerva-7b": [_DIGITS, _GPT2],
    "llama3": [LLAMA3_SPLIT], "llama-v3": [LLAMA3_SPLIT], "llama-bpe": [LLAMA3_SPLIT], "smaug-bpe": [LLAMA3_SPLIT],
    "falcon3": [LLAMA3_SPLIT], "dbrx": [LLAMA3_SPLIT],
    "qwen2": [QWEN2_SPLIT], "deepseek-r1-qwen": [QWEN2_SPLIT], "megrez": [QWEN2_SPLIT],
    "gpt-4o": [O200K_SPLIT],
}
# Vocabularies whose reference tokenizer uses a whole word found in the vocab
# before trying merges.
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"}


def _byte_unicode_map() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# tokenizer.ggml.model -> the class of a tokenizer kept in another module
# (llmrt.tokenizer_encoder registers "bert" and "t5"; the package imports it)
TOKENIZER_MODELS: dict[str, type] = {}


class Tokenizer:
    """Text <-> token ids for one vocabulary, as a GGUF file describes it."""

    def __init__(self, tokens: list[str], types: list[int], meta: dict, path: str = "model"):
        self.tokens = tokens
        self.types = types
        self.vocab_size = len(tokens)
        self._path = path

        def tok_id(key: str) -> int | None:
            v = meta.get(f"tokenizer.ggml.{key}")
            if v is None:
                return None
            if not isinstance(v, int) or not 0 <= v < len(tokens):
                raise GGUFError(f"{path}: tokenizer.ggml.{key}={v!r} is not a valid token id")
            return int(v)

        self.bos_id = tok_id("bos_token_id")
        self.eos_id = tok_id("eos_token_id")
        self.eot_id = tok_id("eot_token_id")
        self.pad_id = tok_id("padding_token_id")
        ty = np.asarray(types)
        self.special_ids = frozenset(np.flatnonzero(ty == CONTROL).tolist())
        self.user_defined_ids = frozenset(np.flatnonzero(ty == USER_DEFINED).tolist())
        default_bos = meta.get("tokenizer.ggml.model") == "llama"
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", default_bos)) and \
            self.bos_id is not None
        self.add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and \
            self.eos_id is not None
        self._bytes: list[bytes] = []  # filled by subclasses
        self._special_by_text: dict[str, int] | None = None  # special_token_id's index

    # -- building -------------------------------------------------------------------
    @staticmethod
    def from_metadata(meta: dict, path: str = "model") -> "Tokenizer":
        model = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if model is None or tokens is None:
            raise GGUFError(f"{path}: the file has no tokenizer (tokenizer.ggml.model / tokens)")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.tokens must be a list of strings")
        types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for "
                            f"{len(tokens)} tokens")
        types = [int(t) for t in types]
        if model == "gpt2":
            return ByteLevelBPETokenizer(tokens, types, meta, path)
        if model == "llama":
            return SentencePieceTokenizer(tokens, types, meta, path)
        if model in TOKENIZER_MODELS:
            return TOKENIZER_MODELS[model](tokens, types, meta, path)
        raise UnsupportedModelError(
            f"{path}: tokenizer type {model!r} is not supported (supported: gpt2, llama, bert, t5)")

    # -- encoding ---------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of text; special-token text such as ``<|im_start|>`` maps to its id.
        With add_special, BOS/EOS are added as the file says."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        ids = self._encode(text)
        if add_special:
            if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def special_token_id(self, text: str) -> int | None:
        """The id of the control or user-defined token spelled `text` (such
        as "<tool_call>"), or None."""
        if self._special_by_text is None:
            by_text: dict[str, int] = {}
            for i in sorted(self.special_ids | self.user_defined_ids):
                by_text.setdefault(self.tokens[i], i)
            self._special_by_text = by_text
        return self._special_by_text.get(text)

    # -- decoding ---------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        out = [int(i) for i in ids]
        for i in out:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return out

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of a sequence of ids (from its start)."""
        d = self.decoder(skip_special=skip_special, sequence_start=True)
        return d.add_many(self._check_ids(ids)) + d.flush()

    def decoder(self, skip_special: bool = True, sequence_start: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special, sequence_start)

    def _strip_first_space(self) -> bool:
        return False


class IncrementalDecoder:
    """Token ids in, text out, never splitting a UTF-8 character."""

    def __init__(self, tok: Tokenizer, skip_special: bool, sequence_start: bool):
        self._tok = tok
        self._skip = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = sequence_start and tok._strip_first_space()

    def add(self, token_id: int) -> str:
        if self._skip and token_id in self._tok.special_ids:
            return ""
        text = self._utf8.decode(self._tok.token_bytes(token_id))
        if self._strip and text:
            self._strip = False
            if text.startswith(" "):
                text = text[1:]
        return text

    def add_many(self, ids: Iterable[int]) -> str:
        return "".join(self.add(i) for i in ids)

    def flush(self) -> str:
        """Whatever is left (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class ByteLevelBPETokenizer(Tokenizer):
    def __init__(self, tokens, types, meta, path="model"):
        super().__init__(tokens, types, meta, path)
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        b2u = _byte_unicode_map()
        u2b = {c: b for b, c in b2u.items()}
        alphabet = set(u2b)
        vocab: dict[str, int] = {}
        self._bytes = []
        for i, t in enumerate(tokens):
            in_alphabet = set(t) <= alphabet
            # A token outside the byte alphabet (a mislabelled special) is respelled.
            spelled = t if in_alphabet else "".join(b2u[b] for b in t.encode("utf-8"))
            vocab.setdefault(spelled, i)
            if types[i] in (CONTROL, USER_DEFINED) or not in_alphabet:
                self._bytes.append(t.encode("utf-8"))
            else:
                self._bytes.append(bytes(u2b[c] for c in t))
        merges_raw = meta.get("tokenizer.ggml.merges")
        if not isinstance(merges_raw, list):
            raise GGUFError(f"{path}: byte-level BPE vocabulary without tokenizer.ggml.merges")
        merges = []
        for m in merges_raw:
            parts = m.split(" ") if isinstance(m, str) else []
            if len(parts) != 2:
                raise GGUFError(f"{path}: malformed merge {m!r} in tokenizer.ggml.merges")
            merges.append((parts[0], parts[1]))

        self.pre = str(meta.get("tokenizer.ggml.pre", "default"))
        splits = PRE_TOKENIZERS.get(self.pre)
        if splits is None:
            import warnings
            warnings.warn(f"unknown pre-tokenizer {self.pre!r}; splitting text as GPT-2 does",
                          stacklevel=3)
            splits = PRE_TOKENIZERS["default"]
        try:
            bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                             ignore_merges=self.pre in _IGNORE_MERGES)
        except Exception as e:
            raise GGUFError(f"{path}: invalid BPE vocabulary or merges ({e})") from None
        hf = HFTokenizer(bpe)
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in splits]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        hf.decoder = decoders.ByteLevel()
        added = [AddedToken(t, special=True, normalized=False)
                 for i, t in enumerate(tokens) if types[i] == CONTROL and set(t) <= alphabet]
        added += [AddedToken(t, special=False, normalized=False)
                  for i, t in enumerate(tokens) if types[i] == USER_DEFINED]
        if added:
            hf.add_special_tokens(added)
        self._hf = hf

    def _encode(self, text: str) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=False).ids)


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int32 -> two's complement 64-bit, as protobuf does
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_field(num: int, wire: int, payload: bytes) -> bytes:
    return _pb_varint((num << 3) | wire) + payload


def _pb_bytes(num: int, data: bytes) -> bytes:
    return _pb_field(num, 2, _pb_varint(len(data)) + data)


def _sentencepiece_proto(tokens, scores, types, unk_id: int, add_dummy_prefix: bool) -> bytes:
    """A serialized sentencepiece ModelProto (BPE, byte fallback) for this vocabulary.

    Field numbers from sentencepiece_model.proto: ModelProto{pieces=1,
    trainer_spec=2, normalizer_spec=3}; SentencePiece{piece=1, score=2, type=3};
    TrainerSpec{model_type=3 (BPE=2), byte_fallback=35, unk_id=40, bos_id=41,
    eos_id=42, pad_id=43}; NormalizerSpec{name=1, add_dummy_prefix=3,
    remove_extra_whitespaces=4, escape_whitespaces=5}.
    """
    out = bytearray()
    known = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
    lengths: dict[int, bytes] = {}  # varints of lengths, made once each
    pack = struct.Struct("<f").pack
    for t, s, ty in zip(tokens, scores, types):
        # SentencePiece{piece=1 (bytes), score=2 (float), type=3 (varint < 128)}
        text = t.encode("utf-8")
        n = len(text)
        ln = lengths.get(n) or lengths.setdefault(n, _pb_varint(n))
        piece = b"\x0a" + ln + text + b"\x15" + pack(s) + bytes((0x18, ty if ty in known else NORMAL))
        m = len(piece)
        out += b"\x0a"  # ModelProto.pieces = 1, length-delimited
        out += lengths.get(m) or lengths.setdefault(m, _pb_varint(m))
        out += piece
    trainer = (_pb_field(3, 0, _pb_varint(2)) + _pb_field(35, 0, _pb_varint(1)) +
               _pb_field(40, 0, _pb_varint(unk_id)) + _pb_field(41, 0, _pb_varint(-1)) +
               _pb_field(42, 0, _pb_varint(-1)) + _pb_field(43, 0, _pb_varint(-1)))
    out += _pb_bytes(2, trainer)
    norm = (_pb_bytes(1, b"identity") + _pb_field(3, 0, _pb_varint(int(add_dummy_prefix))) +
            _pb_field(4, 0, _pb_varint(0)) + _pb_field(5, 0, _pb_varint(1)))
    out += _pb_bytes(3, norm)
    return bytes(out)


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, tokens, types, meta, path="model"):
        super().__init__(tokens, types, meta, path)
        import sentencepiece as spm

        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            scores = [0.0] * len(tokens)
        if len(scores) != len(tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.scores has {len(scores)} entries for "
                            f"{len(tokens)} tokens")
        unk = [i for i, t in enumerate(types) if t == UNKNOWN]
        unk_id = meta.get("tokenizer.ggml.unknown_token_id", unk[0] if unk else None)
        if unk_id is None or not 0 <= int(unk_id) < len(tokens):
            raise GGUFError(f"{path}: sentencepiece vocabulary without an unknown token")
        types = list(types)
        types[int(unk_id)] = UNKNOWN
        self.add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        self._sp = {}
        for prefix in {self.add_space_prefix, False}:
            proc = spm.SentencePieceProcessor()
            try:
                proc.LoadFromSerializedProto(_sentencepiece_proto(
                    tokens, [float(s) for s in scores], types, int(unk_id), prefix))
            except Exception as e:
                raise GGUFError(f"{path}: invalid sentencepiece vocabulary ({e})") from None
            self._sp[prefix] = proc
        self._bytes = []
        for i, t in enumerate(tokens):
            m = _BYTE_PIECE.match(t) if types[i] == BYTE else None
            if m:
                self._bytes.append(bytes([int(m.group(1), 16)]))
            else:
                self._bytes.append(t.replace("\u2581", " ").encode("utf-8"))
        specials = sorted({tokens[i] for i in self.special_ids if tokens[i]}, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
        self._special_id = {tokens[i]: i for i in sorted(self.special_ids, reverse=True)}

    def _strip_first_space(self) -> bool:
        return self.add_space_prefix

    def _encode(self, text: str) -> list[int]:
        # sentencepiece never matches control tokens in text: split them out
        # first. Only the first text piece gets the dummy space prefix.
        ids: list[int] = []
        pos = 0
        parts: list[tuple[bool, str]] = []
        if self._special_re is not None:
            for m in self._special_re.finditer(text):
                if m.start() > pos:
                    parts.append((False, text[pos:m.start()]))
                parts.append((True, m.group(0)))
                pos = m.end()
        if pos < len(text):
            parts.append((False, text[pos:]))
        for k, (special, piece) in enumerate(parts):
            if special:
                ids.append(self._special_id[piece])
            else:
                sp = self._sp[self.add_space_prefix and k == 0]
                ids.extend(sp.EncodeAsIds(piece))
        return ids
