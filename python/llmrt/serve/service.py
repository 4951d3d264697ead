"""The server's request handling over one Model, apart from HTTP: each
OpenAI request becomes a job of the model's one continuous batch, answered as
a JSON body or a stream of server-sent events. The FastAPI app (app.py) and
each Ray Serve replica (ray_serve.py) hold one Service.

One thread runs the model's steps (Runner); readers of a job's events wait
on the event loop and are woken after each step. A stream whose reader goes
away has its job dropped and its KV-cache blocks freed at the next step (the
runner is woken for it). Requests in flight are bounded: beyond
max_batch_size + max_queue, 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Callable, Optional

from starlette.concurrency import run_in_threadpool

from .. import tool_use as T
from . import encoding as E
from . import images as I
from . import messages as M
from . import protocol as P
from . import responses as R
from . import schema as S
from .metrics import Metrics
from .output import Output

if TYPE_CHECKING:
    from ..model import Model
    from ..scheduler import Job

log = logging.getLogger("llmrt.serve")

Disconnected = Optional[Callable[[], Awaitable[bool]]]  # whether the client has gone


def _short(msg: str, limit: int = 300) -> str:
    """An error message fit for a client: its first line, cut to `limit`."""
    line = msg.strip().splitlines()[0] if msg.strip() else msg
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _param_of(msg: str, default: str) -> str:
    """The request field an engine ValueError names ("top_k must be ...",
    "logit_bias: ...", "tools[0].function.name: ...")."""
    head = msg.split(" ", 1)[0].rstrip(":")
    base = head.split("[")[0].split(".")[0]
    if base in S.FIELDS or base in ("tools", "tool_choice", "parallel_tool_calls",
                                    "stop_token_ids", "messages", "prompt"):
        return head
    back = S.API_NAME.get(base)
    return back if back else default


class Runner:
    """The thread that runs the steps of every request's job, waking the
    event loop's readers after each."""

    def __init__(self, model: "Model"):
        self.scheduler = model.scheduler
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: set[asyncio.Event] = set()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="llmrt-steps", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.scheduler.work.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        s = self.scheduler
        while not self.stopping:
            if s.has_work():
                try:
                    s.run_once()
                except Exception:  # noqa: BLE001 - the step's jobs got the error; keep serving
                    log.exception("a step failed")
                if self.loop is not None:
                    self.loop.call_soon_threadsafe(self.wake_all)
            else:
                s.work.wait(0.5)
                s.work.clear()

    def wake_all(self) -> None:
        for ev in self.waiters:
            ev.set()

    async def events(self, job: "Job") -> AsyncIterator[tuple[int, str, int]]:
        """The job's events as the steps produce them; raises its error."""
        while True:
            for e in job.take_events():  # raises the job's error after its last events
                yield e
            if job.over:
                if job.has_pending():
                    continue
                return
            ev = asyncio.Event()
            self.waiters.add(ev)
            try:
                if job.has_news():
                    continue
                await ev.wait()
            finally:
                self.waiters.discard(ev)


class Service:
    def __init__(self, model: "Model", model_name: str | None = None, max_batch_size: int = 64,
                 max_queue: int = 256, default_max_tokens: int = 512,
                 images: "I.Limits | None" = None):
        self.model = model
        self.name = model_name or os.path.splitext(os.path.basename(model.path))[0]
        model.scheduler.limit_running(max_batch_size)
        self.runner = Runner(model)
        self.metrics = Metrics(model)
        self.inflight = 0
        self.jobs: set["Job"] = set()   # in flight
        self.draining = False
        self.limit = max_batch_size + max_queue
        self.default_max_tokens = default_max_tokens
        self.image_limits = images or I.Limits()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.runner.start(loop)

    def stop(self) -> None:
        self.runner.stop()

    def drain(self, timeout: float) -> None:
        """Shutting down (SIGTERM): new requests get 503 at once; those in
        flight may finish for `timeout` seconds, then end with a 503 (an
        error event in a stream). Call on the event loop's thread."""
        self.draining = True
        loop = self.runner.loop
        if loop is not None:
            loop.call_later(max(timeout, 0.0), self._cancel_all)

    def _cancel_all(self) -> None:
        for job in list(self.jobs):
            if not job.finished:
                job.error = P.APIError(503, "the server shut down before the request finished",
                                       type="server_overloaded")
                job.abandon()
        self.runner.wake_all()

    def check_model(self, body: dict) -> None:
        m = body.get("model")
        if m is None:
            return
        if not isinstance(m, str):
            raise P.bad("model", "model must be a string")
        if m != self.name and m not in self.model.adapter_names:
            raise P.APIError(404, f"the model {m[:100]!r} does not exist (this server has "
                                  f"{', '.join(repr(n) for n in self.names())})", param="model",
                             code="model_not_found")

    def names(self) -> list[str]:
        """The base model's id, then each LoRA adapter's (llmrt serve --lora)."""
        return [self.name] + list(self.model.adapter_names)

    def models(self) -> dict:
        return {"object": "list", "data": [P.model_card(n) for n in self.names()]}

    def model_card(self, model_id: str) -> dict:
        if model_id not in self.names():
            raise P.APIError(404, f"the model {model_id[:100]!r} does not exist", param="model",
                             code="model_not_found")
        return P.model_card(model_id)

    def _adapter(self, body: dict, req: S.ParsedRequest) -> S.ParsedRequest:
        """A request for an adapter's name runs with that adapter."""
        aid = self.model.adapter_names.get(str(body.get("model")))
        if aid:
            req.params = dataclasses.replace(req.params, lora=aid)
        return req

    # ---- generation ----
    async def completions(self, body: dict, disconnected: Disconnected = None
                          ) -> dict | AsyncIterator[bytes]:
        req = self._adapter(body, S.parse_params(body, chat=False,
                                                 default_max_tokens=self.default_max_tokens))
        add_special = body.get("add_special", True)
        prompts = S.prompts_of(body)
        ids = [self._ids(p, add_special, "prompt") for p in prompts]
        self._fit(req, ids, "prompt")
        texts = [p if isinstance(p, str) else self.model.detokenize(p) for p in prompts]
        return await self._run(ids, req, chat=False, disconnected=disconnected, prompts=texts)

    async def chat(self, body: dict, disconnected: Disconnected = None
                   ) -> dict | AsyncIterator[bytes]:
        self._admit()  # before images are decoded and encoded
        req, ids, reply = await I.off_loop(self._chat_parts, body)
        return await self._run(ids, req, chat=True, disconnected=disconnected, reply=reply)

    def _chat_parts(self, body: dict) -> tuple[S.ParsedRequest, list[list[int]], "T.Reply"]:
        """A chat request checked: its parameters, its prompt's ids (fit to the
        context) and how its reply is read (reasoning, the tools' calls)."""
        req = self._adapter(body, S.parse_params(body, chat=True,
                                                 default_max_tokens=self.default_max_tokens))
        if body.get("functions") is not None or body.get("function_call") is not None:
            raise P.bad("functions", "functions / function_call are replaced by tools / "
                                     "tool_choice")
        msgs, images = I.prepare(self.model, self.image_limits, S.messages_of(body))
        model = self.model
        plan = None
        if body.get("tools"):
            try:
                plan = T.plan(model.chat_template, msgs, model.tokenizer, body["tools"],
                              body.get("tool_choice"), body.get("parallel_tool_calls", True),
                              req.params.response_format)
                T.compile_checked(model.grammars, plan, model.tokenizer)
            except ValueError as e:
                raise P.bad(_param_of(str(e), "tools"), str(e)) from None
            if plan.response_format is not None:
                req.params = dataclasses.replace(req.params,
                                                 response_format=plan.response_format)
        elif body.get("tool_choice") not in (None, "none", "auto"):
            raise P.bad("tool_choice", "tool_choice needs tools")
        prompt, add_special = self._render(body, plan.messages if plan else msgs, plan)
        ids = [self._ids(prompt, add_special, "messages", images)]
        self._fit(req, ids, "messages")
        return req, ids, T.reply_for(model.chat_template, prompt, plan)

    def _render(self, body: dict, msgs: list[dict], plan: "T.Plan | None") -> tuple[str, bool]:
        """The chat template over the messages (and the plan's tools) -> the
        prompt and whether tokenizing it adds BOS."""
        kw = S.obj("chat_template_kwargs", body.get("chat_template_kwargs") or {})
        taken = {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"} & set(kw)
        if taken:
            raise P.bad("chat_template_kwargs", f"chat_template_kwargs may not set "
                                                f"{', '.join(sorted(taken))}")
        if body.get("reasoning_effort") in ("low", "medium", "high"):  # harmony's system line
            kw = {"reasoning_effort": body["reasoning_effort"], **kw}
        add_gen = S.boolean("add_generation_prompt", body.get("add_generation_prompt", True))
        try:
            prompt = self.model.apply_chat_template(
                msgs, add_generation_prompt=add_gen,
                tools=plan.template_tools() if plan else None, **kw)
        except Exception as e:  # noqa: BLE001 - the template's own error
            raise P.bad("messages", f"the chat template failed: {_short(str(e))}") from None
        return prompt, self.model.chat_add_special(prompt)

    def _ids(self, prompt: Any, add_special: bool, param: str, images: Any = None) -> list[int]:
        try:  # images: spliced in where the template put their markers
            return self.model.prompt_ids(prompt, add_special, images or None)
        except ValueError as e:
            raise P.bad(param, _short(str(e))) from None

    def _fit(self, req: S.ParsedRequest, ids: list[list[int]], param: str) -> None:
        """prompt + max_tokens within the context: a 400 when the client
        asked for more (as vLLM answers), else max_tokens cut to the room."""
        n_ctx = self.model.context_length
        longest = max(len(x) for x in ids)
        want = req.params.max_new_tokens
        if longest + want <= n_ctx:
            return
        if req.max_tokens_given or longest >= n_ctx:
            raise P.bad("max_tokens" if req.max_tokens_given else param,
                        f"this model's maximum context length is {n_ctx} tokens; the request "
                        f"asks for {longest + want} ({longest} in the prompt, {want} to "
                        f"generate)")
        req.params = dataclasses.replace(req.params, max_new_tokens=n_ctx - longest,
                                         min_new_tokens=min(req.params.min_new_tokens,
                                                            n_ctx - longest))

    def _admit(self) -> None:
        if self.draining:
            raise P.APIError(503, "the server is shutting down", type="server_overloaded")
        if self.inflight >= self.limit:
            raise P.APIError(503, "the server is at capacity; retry later",
                             type="server_overloaded", headers={"Retry-After": "1"})

    async def _submit(self, ids: list[list[int]], req: S.ParsedRequest, chat: bool) -> "Job":
        self._admit()
        try:
            job = await run_in_threadpool(self.model.submit, ids, [req.params] * len(ids),
                                          max_batch_size=1 << 30)
        except ValueError as e:
            msg = str(e)
            if msg.startswith("prompt 0: ") and len(ids) == 1:
                msg = msg[len("prompt 0: "):]
            raise P.bad(_param_of(msg, "messages" if chat else "prompt"), _short(msg)) \
                from None
        self.inflight += 1
        self.jobs.add(job)
        return job

    async def _prompt_logprobs(self, req: S.ParsedRequest, ids: list[list[int]]) -> list | None:
        """Each prompt's TokenLogprobs (echo with logprobs, prompt_logprobs)."""
        top = req.prompt_logprobs if req.prompt_logprobs is not None else \
            req.logprobs if req.echo else None
        if top is None:
            return None
        lora = req.params.lora
        return [await run_in_threadpool(self.model.prompt_logprobs, x, top, lora) for x in ids]

    async def _run(self, ids: list[list[int]], req: S.ParsedRequest, chat: bool,
                   disconnected: Disconnected = None, prompts: list[str] | None = None,
                   reply: "T.Reply | None" = None) -> dict | AsyncIterator[bytes]:
        plps = await self._prompt_logprobs(req, ids)
        job = await self._submit(ids, req, chat)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        out = Output(self, req, chat, ids, prompts, plps, reply)
        if req.stream:
            return self._stream(job, out, rid, P.now())
        watch = asyncio.ensure_future(self._watch(job, disconnected)) if disconnected else None
        try:
            async for _ in self.runner.events(job):
                pass
        except BaseException:
            job.abandon()
            raise
        finally:
            self.inflight -= 1
            self.jobs.discard(job)
            if watch is not None:
                watch.cancel()
        if job.cancelled:
            raise P.APIError(499, "the client closed the request", code="client_closed")
        per_prompt = job.results()
        results = [r for rs in per_prompt for r in rs]
        use = self._account(per_prompt, results)
        choices = [out.choice(k, r) for k, r in enumerate(results)]
        return (P.chat_body if chat else P.completion_body)(rid, self.name, P.now(), choices, use)

    async def _watch(self, job: "Job", disconnected: Any) -> None:
        """Cancels the job when its client goes away."""
        while not job.finished:
            await asyncio.sleep(0.25)
            try:
                gone = await disconnected()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("checking a client's connection failed")
                continue
            if gone:
                job.abandon()
                self.runner.wake_all()
                return

    def _account(self, per_prompt: list, results: list) -> dict:
        """Metrics of a finished request, and its usage."""
        self.metrics.finished(results)
        ptoks = sum(rs[0].prompt_tokens for rs in per_prompt)
        self.metrics.prompt_tokens.inc(ptoks)
        return P.usage(ptoks, sum(len(r.token_ids) for r in results),
                       sum(rs[0].cached_tokens for rs in per_prompt))

    async def _stream(self, job: "Job", out: "Output", rid: str,
                      created: int) -> AsyncIterator[bytes]:
        chat, req = out.chat, out.req
        obj = "chat.completion.chunk" if chat else "text_completion"
        n = req.params.n

        def chunk(choices: list, use: dict | None = None) -> bytes:
            body: dict = {"id": rid, "object": obj, "created": created, "model": self.name,
                          "choices": choices}
            if req.include_usage:
                body["usage"] = use
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        width = len(job.tasks) * n
        try:
            first = [out.first_delta(k) for k in range(width)]
            if any(c is not None for c in first):
                yield chunk([c for c in first if c is not None])
            async for index, piece, sample in self.runner.events(job):
                k = index * n + sample
                for c in out.delta(k, piece, job.tasks[index].results()[sample]):
                    yield chunk([c])
            per_prompt = job.results()
            results = [r for rs in per_prompt for r in rs]
            for k, r in enumerate(results):
                for c in out.last_deltas(k, r):
                    yield chunk([c])
            use = self._account(per_prompt, results)
            if req.include_usage:
                yield chunk([], use)
            yield b"data: [DONE]\n\n"
        except BaseException as e:
            job.abandon()  # the reader went away (or the job failed): its blocks go
            if not isinstance(e, Exception):
                raise
            log.error("a stream failed: %s", e)
            err = e if isinstance(e, P.APIError) else P.APIError(
                500, "generation failed", type="server_error")
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            self.inflight -= 1
            self.jobs.discard(job)

    # ---- OpenAI Responses, Anthropic Messages: translations onto chat ----
    async def responses(self, body: dict, disconnected: Disconnected = None
                        ) -> dict | AsyncIterator[bytes]:
        out = await self.chat(R.to_chat(body), disconnected)
        if isinstance(out, dict):
            return R.from_chat(out, body, self.name)
        return R.stream(out, body, self.name)

    async def messages(self, body: dict, disconnected: Disconnected = None
                       ) -> dict | AsyncIterator[bytes]:
        self._admit()
        req, ids, reply = await I.off_loop(self._chat_parts, M.to_chat(body))
        out = await self._run(ids, req, chat=True, disconnected=disconnected, reply=reply)
        if isinstance(out, dict):
            return M.from_chat(out, self.name)
        return M.stream(out, self.name, len(ids[0]))

    def count_tokens(self, body: dict) -> dict:
        """Anthropic's count_tokens: the prompt the request renders, in tokens."""
        chat = M.to_chat(body, count_only=True)
        return {"input_tokens": self.tokenize({k: chat[k] for k in ("messages", "tools")
                                               if k in chat})["count"]}

    # ---- tokens ----
    def tokenize(self, body: dict) -> dict:
        """vLLM's /tokenize: a prompt (or chat messages, rendered) -> token ids."""
        S.unknown_fields(body, {"model", "prompt", "messages", "add_special_tokens",
                                "add_generation_prompt", "tools", "chat_template_kwargs",
                                "reasoning_effort"},
                         sampling=False)
        model = self.model
        add = S.boolean("add_special_tokens", body.get("add_special_tokens", True))
        if "messages" in body:
            msgs = I.no_images(S.messages_of(body))
            plan = None
            if body.get("tools"):
                try:
                    plan = T.plan(model.chat_template, msgs, model.tokenizer, body["tools"])
                except ValueError as e:
                    raise P.bad(_param_of(str(e), "tools"), str(e)) from None
            text, add_bos = self._render(body, plan.messages if plan else msgs, plan)
            add = add and add_bos
        else:
            text = S.string("prompt", body.get("prompt"))
        ids = model.tokenize(text, add_special=add)
        return {"count": len(ids), "max_model_len": model.context_length, "tokens": ids}

    def tokenizer_info(self) -> dict:
        """vLLM's /tokenizer_info (what evaluation harnesses read to tokenize
        through the server)."""
        tok, model = self.model.tokenizer, self.model

        def text(i: int | None) -> str | None:
            return tok.tokens[i] if i is not None else None
        return {"tokenizer_class": type(tok).__name__, "bos_token": text(tok.bos_id),
                "eos_token": text(tok.eos_id), "pad_token": text(tok.pad_id),
                "add_bos_token": tok.add_bos, "model_max_length": model.context_length,
                "chat_template": model.chat_template}

    def detokenize(self, body: dict) -> dict:
        S.unknown_fields(body, {"model", "tokens"}, sampling=False)
        ids = body.get("tokens")
        V = self.model.vocab_size
        if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in ids):
            raise P.bad("tokens", f"tokens must be an array of token ids in [0, {V})")
        return {"prompt": self.model.detokenize(ids)}

    # ---- embeddings, rerank (400 unless the model has a rerank) ----
    async def rerank(self, body: dict) -> dict:
        return await E.rerank(self, body)

    async def embeddings(self, body: dict) -> dict:
        unknown = [k for k in body if k not in ("input", "model", "encoding_format",
                                                "dimensions", "user")]
        if unknown:
            raise P.bad(unknown[0], f"unrecognized request argument: {unknown[0]}")
        inputs = S.inputs_of(body)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise P.bad("encoding_format", "encoding_format must be 'float' or 'base64'")
        model = self.model
        dim = model.config["n_embd"]
        if body.get("dimensions") not in (None, dim):
            raise P.bad("dimensions", f"this model's embeddings have {dim} dimensions")
        ids = [model.tokenize(x) if isinstance(x, str) else x for x in inputs]
        try:
            vecs = await run_in_threadpool(model.embed, ids)
        except ValueError as e:
            raise P.bad("input", str(e)) from None
        ntok = sum(len(t) for t in ids)
        self.metrics.prompt_tokens.inc(ntok)
        return {"object": "list",
                "data": [P.embedding_item(i, v, fmt) for i, v in enumerate(vecs)],
                "model": self.name, "usage": {"prompt_tokens": ntok, "total_tokens": ntok}}
