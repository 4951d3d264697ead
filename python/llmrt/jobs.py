"""From prompts and sampling parameters to the scheduler's tasks: the
checks (prompt, KV-cache budget, draft model), the end tokens, and which
task runs a prompt (n samples decoded together, speculative decoding, beam
search)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .beam_search import BeamSearch
from .request import Decode, Generation, Task
from .sampling import Sampler, SamplingParams
from .scheduler import Job
from .speculative import Speculative

if TYPE_CHECKING:
    from .model import Model


def single(model: "Model", prompt: Any, params: SamplingParams | None, *, add_special: bool,
           draft: "str | Model | None", num_draft_tokens: int, images: Any = None,
           **kwargs: Any) -> Job:
    """A job of one prompt."""
    if not isinstance(params, (SamplingParams, type(None))):
        raise ValueError("params must be a SamplingParams for one prompt (a list of them "
                         "goes with a list of prompts)")
    p = SamplingParams.make(params, **kwargs)
    if draft is not None:
        check_draft(model, draft, p, num_draft_tokens)
        if images and not isinstance(draft, str):
            raise ValueError("a draft model cannot read images: use draft='prompt_lookup'")
    ids = model.prompt_ids(prompt, add_special, images)
    check_budget(model, ids, p)
    if not isinstance(draft, (str, type(None))):
        check_budget(draft, ids, p, what="the draft model's")
    job = Job(model.scheduler, max_batch=max(p.n, p.num_beams))
    return model.scheduler.submit(job, [task(model, job, 0, ids, p, draft, num_draft_tokens)])


def batch(model: "Model", prompts: list, params: Any, *, add_special: bool, max_batch_size: int,
          **kwargs: Any) -> Job:
    """A job of several prompts, each its own SamplingParams or one for all."""
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or \
            max_batch_size < 1:
        raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    if isinstance(params, (list, tuple)):
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        plist = [SamplingParams.make(q, **kwargs) for q in params]
    else:
        plist = [SamplingParams.make(params, **kwargs)] * len(prompts)
    job = Job(model.scheduler, max_batch=max_batch_size)
    tasks = []
    for i, (prompt, p) in enumerate(zip(prompts, plist)):
        if p.num_beams > 1:
            raise ValueError("beam search runs one prompt at a time (num_beams > 1)")
        try:
            ids = model.prompt_ids(prompt, add_special)
            check_budget(model, ids, p)
            tasks.append(task(model, job, i, ids, p))
        except ValueError as e:
            raise ValueError(f"prompt {i}: {e}") from None
    return model.scheduler.submit(job, tasks)


def task(model: "Model", job: Job, index: int, ids: list[int], p: SamplingParams,
         draft: "str | Model | None" = None, num_draft_tokens: int = 8) -> Task:
    """The task that runs one prompt: beam search, speculative decoding, or
    n samples decoded together."""
    ends = end_ids(model, p)
    model.check_lora(p.lora)
    blocks = kv_plan(model, ids, p)[2] + 1  # + 1: a copy-on-write of a shared last block
    if p.num_beams > 1:
        return BeamSearch(job, index, ids, p, ends, model.tokenizer, model.context_length, blocks)
    grammar = model.grammars.compile(p.response_format)
    reqs = []
    for j in range(p.n):  # sample j draws with seed + j
        seed = None if p.seed is None else p.seed + j
        sampler = Sampler(p, model.vocab_size, ends, seed)
        # held here until the request holds it (the sampler's reference is weak)
        keep = grammar.constraint(sampler, ends) if grammar is not None else None
        reqs.append(Generation(model.tokenizer, ids, p, sampler, ends, model.context_length, job,
                            index, speculative=draft is not None, choice=j))
        del keep
    if draft is not None:
        src = draft if isinstance(draft, str) else draft.engine
        return Speculative(job, index, reqs[0], blocks, src, num_draft_tokens)
    eng = model.engine
    bt = eng.block_tokens
    per_sample = -(-eng.kv_need(len(ids), p.max_new_tokens)[0] // bt) - len(ids) // bt
    return Decode(job, index, reqs, blocks, per_sample)


def kv_plan(model: "Model", ids: list[int], p: SamplingParams) -> tuple[int, int, int]:
    """(sequences, positions, KV-cache blocks) a request needs at most: n
    samples, or num_beams + 1 beams, share the prompt's full blocks."""
    k = max(p.n, p.num_beams + (p.num_beams > 1))
    return (k, *model.engine.kv_need(len(ids), p.max_new_tokens, k))


def check_budget(model: "Model", ids: list[int], p: SamplingParams, what: str = "the") -> None:
    k, need, blocks = kv_plan(model, ids, p)
    cap, bt = model.engine.capacity_tokens, model.engine.block_tokens
    if need > cap or blocks * bt > cap:
        many = f" for {k} sequences" if k > 1 else ""
        raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens={p.max_new_tokens} "
                         f"need {max(need, blocks * bt)} KV-cache positions{many}, but "
                         f"{what} cache holds {cap} (kv_cache_tokens); raise it or lower "
                         f"max_new_tokens")


def end_ids(model: "Model", p: SamplingParams) -> set[int]:
    for t in p.stop_token_ids or []:
        if t >= model.vocab_size:
            raise ValueError(f"stop_token_ids: {t} is outside the vocabulary")
    for t in p.logit_bias or {}:
        if t >= model.vocab_size:
            raise ValueError(f"logit_bias: token id {t} is outside the vocabulary "
                             f"(size {model.vocab_size})")
    ends = set() if p.ignore_eos else set(model.end_token_ids)
    ends.update(int(i) for i in (p.stop_token_ids or []))
    return ends


def check_draft(model: "Model", draft: Any, p: SamplingParams, num_draft_tokens: int) -> None:
    if isinstance(draft, str):
        if draft != "prompt_lookup":
            raise ValueError(f"draft must be None, 'prompt_lookup' or a Model, got {draft!r}")
    elif type(draft).__name__ == "Model" and hasattr(draft, "engine"):
        if draft is model:
            raise ValueError("draft must be another model than the one it drafts for")
        if draft.vocab_size != model.vocab_size or \
                draft.tokenizer.tokens != model.tokenizer.tokens:
            raise ValueError("the draft model must have the same vocabulary as the model "
                             f"({draft.vocab_size} vs {model.vocab_size} tokens, or "
                             "different token texts)")
    else:
        raise ValueError(f"draft must be None, 'prompt_lookup' or a Model, got {draft!r}")
    if not isinstance(num_draft_tokens, int) or not 1 <= num_draft_tokens <= 64:
        raise ValueError(f"num_draft_tokens must be in [1, 64], got {num_draft_tokens!r}")
    if p.n > 1 or p.num_beams > 1:
        raise ValueError("speculative decoding (draft=) makes one sequence: use n=1 and "
                         "num_beams=1")
    if p.mirostat_mode:
        raise ValueError("speculative decoding cannot run with mirostat, whose "
                         "distribution adapts with every draw")
