"""The engine: the one owner of a native model.

It holds the weights, the paged KV cache and its sequences, and runs
forward steps. Everything that touches the native model goes through here:
the scheduler, speculative decoding, Model.logits, the tests. Calls are safe
from any number of threads (each holds the engine's lock, which is a leaf:
nothing else is acquired while holding it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core
from .gguf_loader import LoadedGGUF

# A step entry: (seq, tokens, "none" | "last" | "all"), or (seq, tokens,
# "last", samplers, n_generated) whose samplers each draw a next token from
# the last row inside the step (the logits stay native).
Entry = tuple


class Engine:
    def __init__(self, g: LoadedGGUF, context_length: int, **options: Any):
        opts = _core.ModelOptions()
        for k, v in options.items():
            setattr(opts, k, v)
        self._native = _core.LlamaModel(dict(g.config, n_ctx=context_length), g.tensors, opts)
        self._gguf = g  # keeps the memory map alive
        # Tensors the backend copied into its own layout are not read from the
        # file again: drop their pages from this process's resident set.
        g.reader.release([g.tensors[n][3] for n in self._native.released_tensors])
        self.lock = threading.RLock()
        self.vocab_size: int = self._native.n_vocab
        self.context_length = context_length
        self.threads: int = self._native.threads
        self.backend: str = self._native.backend
        st = self._native.cache_stats()
        self.block_tokens: int = st["block_tokens"]
        self.blocks_total: int = st["blocks_total"]
        self.capacity_tokens: int = st["capacity_tokens"]
        # time spent in native forward steps, and their count
        self.step_seconds = 0.0
        self.steps = 0

    # ---- sequences of the KV cache ------------------------------------------------------
    def new_sequence(self) -> int:
        with self.lock:
            return self._native.new_sequence()

    def set_adapter(self, seq: int, adapter: int) -> None:
        """The LoRA adapter an empty sequence's rows run with (0: none)."""
        with self.lock:
            self._native.set_adapter(seq, adapter)

    def add_adapter(self, pairs: list) -> int:
        """A LoRA adapter: (layer, target, A, B scaled) tuples; returns its id."""
        with self.lock:
            return self._native.add_adapter(pairs)

    def fork(self, seq: int) -> int:
        """A new sequence sharing seq's blocks (copied when either writes)."""
        with self.lock:
            return self._native.fork_sequence(seq)

    def release(self, seq: int) -> None:
        with self.lock:
            self._native.release_sequence(seq)

    def reuse_prefix(self, seq: int, tokens: Sequence[int]) -> int:
        """Maps the longest cached prefix of tokens onto an empty sequence;
        returns the positions reused."""
        with self.lock:
            return self._native.reuse_prefix(seq, np.asarray(tokens, np.int32))

    def truncate(self, seq: int, n: int) -> None:
        with self.lock:
            self._native.truncate(seq, n)

    def length(self, seq: int) -> int:
        with self.lock:
            return self._native.seq_length(seq)

    def block_table(self, seq: int) -> list[int]:
        with self.lock:
            return self._native.block_table(seq)

    def blocks_available(self) -> int:
        """Blocks the pool can hand out now (free and unreferenced cached ones)."""
        with self.lock:
            return self._native.blocks_available()

    def kv_need(self, n_prompt: int, max_new_tokens: int, n_seqs: int = 1) -> tuple[int, int]:
        """(positions, blocks) a request needs at most: the prompt and every
        new token but the last; n_seqs sequences continuing one prompt share
        its full blocks and each need the rest."""
        need = min(n_prompt + max(max_new_tokens - 1, 0), self.context_length)
        bt = self.block_tokens
        return need, n_prompt // bt + n_seqs * (-(-need // bt) - n_prompt // bt)

    def cache_stats(self) -> dict:
        with self.lock:
            return dict(self._native.cache_stats())

    def clear_prefix_cache(self) -> None:
        with self.lock:
            self._native.clear_prefix_cache()

    # ---- forward ------------------------------------------------------------------------
    def step(self, entries: list[Entry]) -> tuple[np.ndarray, np.ndarray, list | None]:
        """One forward over every entry's tokens (shared passes over the
        weights) -> (logits of the wanted rows of entries without samplers,
        float32 (rows, vocab); drawn tokens, int32, one per sampler; logprobs:
        None, or per sampler None / (logprob, top ids, top logprobs)). The KV
        cache is left as it was when it raises."""
        with self.lock:
            t0 = time.perf_counter()
            try:
                return self._native.forward_batch(entries)
            finally:
                self.step_seconds += time.perf_counter() - t0
                self.steps += 1

    def decode(self, entries: list[tuple], steps: int) -> tuple[np.ndarray, list | None]:
        """Up to `steps` decode steps in one native call. entries: (seq, token
        to feed, sampler, tokens generated, tokens it may still draw); an
        entry stops after one of its sampler's end tokens or its budget ->
        (tokens int32 (steps run, entries), -1 once stopped; logprobs: None,
        or per step per entry None / (logprob, top ids, top logprobs))."""
        with self.lock:
            t0 = time.perf_counter()
            try:
                out = self._native.decode(entries, steps)
            finally:
                self.step_seconds += time.perf_counter() - t0
            self.steps += out[0].shape[0]
            return out

    def forward(self, seq: int, tokens: Sequence[int] | np.ndarray,
                logits: str = "last") -> np.ndarray:
        """Appends tokens to a sequence -> the logits of its last token
        (vocab,), of every token (n, vocab) with logits="all", or of none
        (0, vocab) with "none"."""
        out = self.step([(seq, np.asarray(tokens, np.int32), logits)])[0]
        return out[0] if logits == "last" else out

    def hidden_states(self, entries: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """Appends (seq, tokens) entries in shared passes -> their rows' final
        normed hidden states, float32 (rows, n_embd), entry after entry."""
        with self.lock:
            return self._native.hidden_states(
                [(s, np.asarray(t, np.int32)) for s, t in entries])

    def logits(self, ids: np.ndarray, adapter: int = 0) -> np.ndarray:
        """float32 logits (len(ids), vocab) of ids as a fresh sequence (with a
        LoRA adapter's id, through it)."""
        with self.lock:
            seq = self._native.new_sequence()
            try:
                if adapter:
                    self._native.set_adapter(seq, adapter)
                return self.forward(seq, ids, "all")
            finally:
                self._native.release_sequence(seq)
