"""llmrt.Model: load a GGUF model, tokenize, compute logits, generate and chat."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import jobs
from .chat import CHATML_TEMPLATE, end_token_ids, render, with_reasoning
from .engine import Engine
from .gguf_loader import load_gguf
from .outputs import BatchStream, PerplexityResult, TextStream
from .reasoning import style_of
from .sampling import SamplingParams
from .scheduler import Job, Scheduler
from .structured import Grammars
from .tokenizer import Tokenizer
from .utils import check_device, default_model_path
from .vision import PromptIds, split_images, vision_for


def _is_batch(prompt: Any) -> bool:
    """Whether generate()'s prompt is a list of prompts (texts or id lists)."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(x, str) or isinstance(x, (list, tuple, np.ndarray)) for x in prompt)


def _positive_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


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
    activations ("int8" and ``batch_invariant`` apply to the CPU), or with
    activations="f16" the products of 16 tokens or more (prompts, batches,
    speculative verification) on tensor cores: f16 operands, f32 sums.

    >>> m = llmrt.Model()                       # the default SmolLM2 model
    >>> m.generate("The capital of France is", max_new_tokens=8).text
    """

    def __new__(cls, path: str | os.PathLike | None = None, *args: Any, **kwargs: Any) -> Any:
        from .encoder import EncoderModel, is_encoder_file  # BERT, XLM-R, nomic-bert files
        if cls is Model and path is not None and is_encoder_file(os.fspath(path)):
            return EncoderModel(path, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu",
                 threads: int | None = None, context_length: int | None = None,
                 activations: str = "int8", kv_cache_tokens: int | None = None,
                 kv_cache_bytes: int | None = None, kv_cache_dtype: str = "f16",
                 kv_block_tokens: int = 32, prefix_caching: bool = True,
                 batch_invariant: bool = False, lora: Sequence[Any] | None = None,
                 mmproj: str | os.PathLike | bool | None = None):
        check_device(device, activations)
        if threads is None:
            from .utils import physical_cores
            threads = physical_cores()
        _positive_int("threads", threads)
        for name, v in (("kv_cache_tokens", kv_cache_tokens), ("kv_cache_bytes", kv_cache_bytes)):
            if v is not None:
                _positive_int(name, v)
        _positive_int("kv_block_tokens", kv_block_tokens)
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
        _positive_int("context_length", context_length)
        if context_length > n_train:
            raise ValueError(f"context_length {context_length} exceeds the {n_train} tokens "
                             f"this model was trained for")
        self.context_length = context_length
        self.activations = activations
        # images: the vision tower of an mmproj file (given, or found beside the model)
        self.vision = vision_for(path, mmproj, self.tokenizer, g, dict(
            device=device, threads=threads, int8_activations=activations == "int8"))
        if self.vision is not None and self.vision.projector.bidirectional:
            g.config["embeds_bidirectional"] = 1
        self.config = dict(g.config)
        # the one owner of the native model, and the batch every generation joins
        self.engine = Engine(g, context_length, device=device, threads=threads,
                             int8_activations=activations == "int8",
                             tensor_cores=activations == "f16",
                             batch_invariant=bool(batch_invariant),
                             kv_cache_tokens=kv_cache_tokens or 0,
                             kv_cache_bytes=kv_cache_bytes or 0, kv_cache_dtype=kv_cache_dtype,
                             kv_block_tokens=kv_block_tokens, prefix_caching=bool(prefix_caching))
        if self.vision is not None:  # ids past the vocabulary stand for images' rows
            self.engine.images = self.vision.table
            self.vision.table.on_wrap = self.engine.clear_prefix_cache
        # on a GPU, decode steps run 8 to a native call when nothing waits
        self.scheduler = Scheduler(self.engine, decode_steps=8 if device == "cuda" else 1)
        self._stop_ids = self._end_tokens()
        # compiled response formats (structured output), built on first use
        self.grammars = Grammars(self.tokenizer, self.vocab_size, self._stop_ids)
        self.adapters: list[str] = []  # LoRA adapters loaded, id - 1 -> path
        self.adapter_names: dict[str, int] = {}
        for item in lora or ():
            path_, scale = item if isinstance(item, tuple) else (item, 1.0)
            self.load_lora(path_, scale)

    # ---- properties -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    @property
    def threads(self) -> int:
        return self.engine.threads

    @property
    def end_token_ids(self) -> frozenset[int]:
        """The tokens that end a generation (end of text, end of turn)."""
        return self._stop_ids

    @end_token_ids.setter
    def end_token_ids(self, ids: Iterable[int]) -> None:
        """Replaces them for the generations started from now on."""
        stop = frozenset(int(i) for i in ids)
        if any(not 0 <= i < self.vocab_size for i in stop):
            raise ValueError(f"end token ids must be in [0, {self.vocab_size})")
        self._stop_ids = stop
        self.grammars = Grammars(self.tokenizer, self.vocab_size, stop)

    @property
    def chat_template(self) -> str | None:
        t = self.metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) else None

    def __repr__(self) -> str:
        return (f"llmrt.Model({os.path.basename(self.path)!r}, arch={self.arch}, "
                f"layers={self.config['n_layer']}, ctx={self.context_length}, "
                f"backend={self.engine.backend}, threads={self.threads})")

    def _end_tokens(self) -> frozenset[int]:
        return end_token_ids(self.tokenizer)

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

    def logits(self, ids: Sequence[int], lora: int | None = None) -> np.ndarray:
        """float32 logits (len(ids), vocab) for ids as a fresh sequence (through
        the LoRA adapter `lora`, an id from load_lora)."""
        return self.engine.logits(self._ids(ids), self.check_lora(lora))

    def score(self, prompt: str | Sequence[int], continuation: str | Sequence[int],
              add_special: bool = True, lora: int | None = None) -> Any:
        """log P(continuation | prompt) -> scoring.ScoreResult (logprob, is_greedy,
        token_logprobs): a multiple-choice answer's loglikelihood, as
        evaluation harnesses compute it."""
        from .scoring import score
        return score(self, prompt, continuation, add_special, lora)

    def prompt_logprobs(self, ids: Sequence[int], top: int = 0,
                        lora: int | None = None) -> list:
        """Each token's TokenLogprob given the tokens before it (with the
        `top` likeliest alternatives); None for the first."""
        from .scoring import prompt_logprobs
        return prompt_logprobs(self, ids, top, lora)

    def embed(self, texts: str | Sequence[str] | Sequence[Sequence[int]],
              pooling: str | None = None, normalize: bool = True,
              add_special: bool = True) -> np.ndarray:
        """Embeddings of texts (or token id lists) from the final normed
        hidden states: mean, first or last token ("mean", "cls", "last"; by
        default the file's pooling_type, else mean), L2-normalised unless
        normalize=False -> float32 (len(texts), n_embd); one batch of fresh
        sequences between the steps of running generations."""
        from .embedding import embed, file_pooling
        return embed(self, texts, pooling or file_pooling(self.metadata, self.arch), normalize,
                     add_special)

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               return_documents: bool = False, instruction: str | None = None) -> list:
        """Documents ranked by relevance to the query, best first, as
        Qwen3-Reranker scores them: P("yes") after its judging prompt ->
        [RerankResult(index, score, document)]."""
        from .rerank import decoder_rerank
        return decoder_rerank(self, query, documents, top_n, return_documents, instruction)

    def perplexity(self, text: str | Sequence[int], window: int = 512,
                   max_windows: int | None = None, progress: bool | None = None
                   ) -> PerplexityResult:
        """Perplexity of a text (or token ids) as llama.cpp's perplexity tool
        measures it: consecutive windows of `window` tokens (a shorter rest
        dropped), each a fresh sequence (its first token BOS where the
        vocabulary adds one), the second half of each scored
        (scoring.perplexity)."""
        from .scoring import perplexity
        return perplexity(self, text, window, max_windows, progress)

    # ---- LoRA adapters ------------------------------------------------------------------
    def load_lora(self, path: str | os.PathLike, scale: float = 1.0,
                  name: str | None = None, dtype: str = "f16") -> int:
        """Load a LoRA adapter (a PEFT directory, or a GGUF adapter file) and
        return its id: generate(..., lora=id) runs a request with it, beside
        requests with other adapters or none in the same batch (each row's
        products get + scale * alpha / r * B (A x)). dtype: how A and B are
        stored, "f16" (the default: half the bytes each token reads) or
        "f32". Raises ValueError (lora.AdapterError) when the adapter does
        not fit the model."""
        from .lora import load
        pairs = load(path, self, scale, dtype)
        aid = self.engine.add_adapter(pairs)
        self.adapters.append(os.fspath(path))
        # the server's model id for it (llmrt serve --lora name=path)
        self.adapter_names[name or os.path.basename(os.path.normpath(os.fspath(path)))] = aid
        return aid

    def check_lora(self, lora: Any) -> int:
        """An adapter id given to a request -> the native id (0: none);
        ValueError when load_lora has not given it."""
        if lora is None:
            return 0
        if isinstance(lora, bool) or not isinstance(lora, (int, np.integer)) or \
                not 1 <= lora <= len(self.adapters):
            raise ValueError(f"lora: no adapter {lora!r} (load_lora has loaded "
                             f"{len(self.adapters)})")
        return int(lora)

    # ---- KV cache -----------------------------------------------------------------------
    def cache_stats(self) -> dict:
        """Prefix-cache and block-pool counters: tokens_computed (positions run
        through the model), hits / misses (full blocks found / not found at
        prompt lookups), tokens_reused, evictions, copies
        (copy-on-write), blocks_total / in_use / cached / free, block_tokens,
        capacity_tokens, pool_bytes, dtype; with sliding-window layers (gemma)
        also sliding_window and sliding_blocks_in_use / cached: the blocks
        those layers hold in their own pool, where blocks behind the window
        are released."""
        return self.engine.cache_stats()

    def clear_prefix_cache(self) -> None:
        """Forget every cached block that no sequence uses."""
        self.engine.clear_prefix_cache()


    # ---- generation -------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int] | Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 stream: bool = False, add_special: bool = True,
                 draft: "str | Model | None" = None, num_draft_tokens: int = 8,
                 max_batch_size: int = 64, images: Sequence[Any] | None = None,
                 **kwargs: Any) -> Any:
        """Continue a prompt (text, or token ids used as given), or a list of
        prompts. ``images`` (paths, bytes, data URIs, PIL images or arrays; a
        model loaded with its mmproj) go where the text has the chat
        template's image markers, or before the text.

        ``params`` (a SamplingParams) and/or its fields as keywords
        (``max_new_tokens`` / ``max_tokens``, ``temperature``, ``top_k``,
        ``top_p``, ``min_p``, ``typical_p``, ``repetition_penalty``,
        ``presence_penalty``, ``frequency_penalty``, ``penalty_last_n``,
        ``logit_bias``, ``mirostat_mode`` / ``_tau`` / ``_eta``, ``seed``,
        ``stop``, ``stop_token_ids``, ``ignore_eos``, ``min_new_tokens``,
        ``logprobs``, ``n``, ``num_beams``, ``length_penalty``,
        ``response_format``); keywords override ``params``. Greedy by
        default (temperature 0).

        ``response_format`` constrains the text to a JSON Schema
        (``{"type": "json_schema", "json_schema": {"schema": {...}}}``, a
        schema dict, a pydantic model class, or ``{"type": "json_object"}``),
        a regex (``{"type": "regex", "pattern": ...}``), a Lark-style grammar
        (``{"type": "grammar", "grammar": ...}``) or a list of choices; see
        llmrt.structured. Tokens it disallows are never drawn, and the end
        token only where it is complete; a generation cut by max_new_tokens
        ends with finish_reason "length" and a valid prefix.

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

        Any number of threads may call generate() on one Model: their
        requests join the one running batch (one pass over the weights per
        step for all of them) and each returns what it returns alone, as a
        request in a list of prompts does (bit for bit with
        ``batch_invariant=True``).

        Speculative decoding (one prompt, n = 1, no beams): ``draft=
        "prompt_lookup"`` drafts from the prompt and text so far (no second
        model; for input-grounded work), ``draft=other_model`` from a smaller
        model with the same vocabulary; ``num_draft_tokens`` per step. Greedy
        output is exactly plain greedy decoding's; sampled output follows the
        same distribution (accept / resample rule). The result's timings
        report draft_tokens, draft_acceptance and tokens_per_forward.
        """
        if _is_batch(prompt):
            if draft is not None:
                raise ValueError("speculative decoding (draft=) runs one prompt at a time")
            return self._generate_batch(list(prompt), params, stream=stream,
                                        add_special=add_special, max_batch_size=max_batch_size,
                                        **kwargs)
        p = SamplingParams.make(params, **kwargs) if isinstance(params, (SamplingParams,
                                                                         type(None))) else None
        if p is not None and (p.n > 1 or p.num_beams > 1) and stream:
            raise ValueError("stream=True produces one sequence: use n=1 and num_beams=1")
        job = self.submit(prompt, params, add_special=add_special, draft=draft,
                          num_draft_tokens=num_draft_tokens, images=images, **kwargs)
        many = p is not None and p.n > 1

        def shape(results: list) -> Any:
            return results[0] if many else results[0][0]
        if stream:
            return TextStream(job, shape)
        return shape(job.run())

    def submit(self, prompt: str | Sequence[int] | Sequence[str | Sequence[int]],
               params: SamplingParams | Sequence[SamplingParams] | None = None, *,
               add_special: bool = True, draft: "str | Model | None" = None,
               num_draft_tokens: int = 8, max_batch_size: int = 64,
               images: Sequence[Any] | None = None, **kwargs: Any) -> Job:
        """Queues a generation (as generate() takes it) without running it,
        for a server whose own thread runs the steps (Scheduler.run_once):
        the returned Job's ``events`` fill with (prompt index, text piece,
        sample) as the steps run, ``finished`` / ``error`` tell its state,
        ``results()`` gives each prompt's list of n results at the end, and
        ``abandon()`` / ``cancel()`` stop it."""
        if _is_batch(prompt):
            if draft is not None or images:
                raise ValueError("speculative decoding (draft=) and images= go with one prompt")
            return jobs.batch(self, list(prompt), params, add_special=add_special,
                              max_batch_size=max_batch_size, **kwargs)
        return jobs.single(self, prompt, params,  # type: ignore[arg-type]  # checked there
                           add_special=add_special, draft=draft,
                           num_draft_tokens=num_draft_tokens, images=images, **kwargs)

    def prompt_ids(self, prompt: str | Sequence[int], add_special: bool = True,
                   images: Sequence[Any] | None = None) -> list[int]:
        """A prompt's token ids (text tokenized, or ids checked; with images
        their tokens spliced in), at most the context length."""
        if images:
            if self.vision is None or not isinstance(prompt, str):
                raise ValueError("images need a text prompt and a model loaded with its "
                                 "vision encoder (Model(path, mmproj=...))")
            ids: list[int] = self.vision.prompt(prompt, list(images), add_special)
        elif isinstance(prompt, PromptIds):  # made by prompt_ids with images: checked
            if self.vision is None or prompt.table is not self.vision.table:
                raise ValueError("a prompt with images made by another model")
            ids = prompt
        elif isinstance(prompt, str):
            ids = self.tokenize(prompt, add_special=add_special)
        else:
            ids = self._ids(prompt).tolist()
        if not ids:
            raise ValueError("the prompt is empty (no tokens); pass text or add_special=True")
        if len(ids) > self.context_length:
            raise ValueError(f"the prompt is {len(ids)} tokens, longer than the context length "
                             f"{self.context_length}")
        return ids

    def _generate_batch(self, prompts: list, params: Any, *, stream: bool, add_special: bool,
                        max_batch_size: int, **kwargs: Any) -> Any:
        job = jobs.batch(self, prompts, params, add_special=add_special,
                         max_batch_size=max_batch_size, **kwargs)
        ns = [len(t.results()) for t in job.tasks]  # n samples a prompt

        def shape(results: list) -> list:
            return [r if n > 1 else r[0] for r, n in zip(results, ns)]
        if stream:
            return BatchStream(job, shape)
        return shape(job.run())

    def chat(self, messages: Sequence[dict[str, Any]], params: SamplingParams | None = None, *,
             stream: bool = False, add_generation_prompt: bool = True,
             tools: Sequence[dict] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool = True, chat_template_kwargs: dict | None = None,
             **kwargs: Any):
        """Render messages with the model's chat template (chat_template_kwargs: its
        variables, e.g. reasoning_effort) and generate the reply up to its end of turn.
        Where the template shows the model reasons first (harmony channels,
        ``<think>``), text is the answer and ``reasoning_content`` the
        reasoning (a stream's ``deltas()`` gives ("reasoning" | "content", text)).

        ``tools`` (OpenAI's function tools) are rendered through the template
        and the calls the reply makes are parsed in the model family's format
        (llmrt.tools): the result's ``tool_calls`` (ToolCall: name, arguments
        as JSON text, id), its text without them, finish_reason
        "tool_calls". ``tool_choice`` "auto" (default), "none", "required"
        or {"type": "function", "function": {"name": ...}}; calls follow the
        tools' parameter schemas (a grammar: from the first token for
        "required" and a named tool, from where a call starts for "auto")."""
        from . import tool_use as T
        messages, images = split_images(messages)
        if images:
            kwargs["images"] = images
        plan = None
        if tools is not None:
            rf = kwargs.get("response_format", params.response_format if params else None)
            plan = T.plan(self.chat_template, messages, self.tokenizer, tools, tool_choice,
                          parallel_tool_calls, rf)
            T.compile_checked(self.grammars, plan, self.tokenizer)
            messages = plan.messages
            if plan.response_format is not None:
                kwargs["response_format"] = plan.response_format
        elif tool_choice is not None:
            raise ValueError("tool_choice needs tools")
        prompt = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                          tools=plan.template_tools() if plan else None,
                                          **(chat_template_kwargs or {}))
        add_special = self.chat_add_special(prompt)
        if params is None and "max_new_tokens" not in kwargs and "max_tokens" not in kwargs:
            kwargs["max_new_tokens"] = 256
        out = self.generate(prompt, params, stream=stream, add_special=add_special, **kwargs)
        reply = T.reply_for(self.chat_template, prompt, plan)
        if not reply.active:
            return out
        if stream:
            return T.ReplyStream(out, reply, self.tokenizer)
        for r in out if isinstance(out, list) else [out]:
            T.finish_reply(r, reply, self.tokenizer)
        return out

    def apply_chat_template(self, messages: Sequence[dict[str, Any]],
                            add_generation_prompt: bool = True,
                            tools: Sequence[dict] | None = None, **template_kwargs: Any) -> str:
        """The messages rendered by the model's chat template (ChatML where the
        file has none); ``tools`` and any other keywords become the
        template's variables (e.g. enable_thinking)."""
        tok = self.tokenizer
        extra = dict(template_kwargs, **({"tools": list(tools)} if tools else {}))
        harmony = style_of(self.chat_template)[0] == "harmony"
        return render(self.chat_template or CHATML_TEMPLATE, with_reasoning(messages, harmony),
                      bos_token=tok.tokens[tok.bos_id] if tok.bos_id is not None else "",
                      eos_token=tok.tokens[tok.eos_id] if tok.eos_id is not None else "",
                      add_generation_prompt=add_generation_prompt, **extra)

    def chat_add_special(self, prompt: str) -> bool:
        """Whether tokenizing a rendered chat prompt adds BOS: not where the
        template wrote it already."""
        tok = self.tokenizer
        bos = tok.tokens[tok.bos_id] if tok.bos_id is not None else ""
        return not (bos and prompt.startswith(bos))
