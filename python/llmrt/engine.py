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
from .step import DecodeEntry, DecodeResult, Logits, StepEntry, StepResult


class Engine:
    def __init__(self, g: LoadedGGUF, context_length: int, **options: Any):
        opts = _core.ModelOptions()
        for k, v in options.items():
            setattr(opts, k, v)
        by_role = {role: g.tensors[name] for role, name in g.roles.items()}
        self._native = _core.LlamaModel(dict(g.config, n_ctx=context_length), by_role, opts)
        self._gguf = g  # keeps the memory map alive
        # Tensors the backend copied into its own layout are not read from the
        # file again: drop their pages from this process's resident set.
        g.reader.release([by_role[r][3] for r in self._native.released_tensors])
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
        # the ids past the vocabulary that stand for images' rows (vision.ImageTable)
        self.images: Any = None

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
    def step(self, entries: list[StepEntry]) -> StepResult:
        """One forward over every entry's tokens (shared passes over the
        weights). The KV cache is left as it was when it raises."""
        if self.images is not None and self.images.active():
            entries = [self.images.attach(e) for e in entries]
        with self.lock:
            t0 = time.perf_counter()
            try:
                return StepResult(*self._native.forward_batch(entries))
            finally:
                self.step_seconds += time.perf_counter() - t0
                self.steps += 1

    def decode(self, entries: list[DecodeEntry], steps: int) -> DecodeResult:
        """Up to `steps` decode steps in one native call; an entry stops after
        one of its sampler's end tokens or its budget."""
        with self.lock:
            t0 = time.perf_counter()
            try:
                out = DecodeResult(*self._native.decode(entries, steps))
            finally:
                self.step_seconds += time.perf_counter() - t0
            self.steps += out.tokens.shape[0]
            return out

    def forward(self, seq: int, tokens: Sequence[int] | np.ndarray,
                logits: Logits = "last") -> np.ndarray:
        """Appends tokens to a sequence -> the logits of its last token
        (vocab,), of every token (n, vocab) with logits="all", or of none
        (0, vocab) with "none"."""
        out = self.step([StepEntry(seq, np.asarray(tokens, np.int32), logits)]).logits
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
