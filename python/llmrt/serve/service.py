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
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.concurrency import run_in_threadpool

from . import protocol as P
from .metrics import Metrics

if TYPE_CHECKING:
    from ..model import Model
    from ..scheduler import Job

log = logging.getLogger("llmrt.serve")


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
                    self.loop.call_soon_threadsafe(self._wake)
            else:
                s.work.wait(0.5)
                s.work.clear()

    def _wake(self) -> None:
        for ev in self.waiters:
            ev.set()

    async def events(self, job: "Job") -> AsyncIterator[tuple[int, str, int]]:
        """The job's events as the steps produce them; raises its error."""
        while True:
            while job.events:
                yield job.events.popleft()
            if job.error is not None:
                err, job.error = job.error, None
                raise err
            if job.finished:
                return
            ev = asyncio.Event()
            self.waiters.add(ev)
            try:
                if job.events or job.finished or job.error is not None:
                    continue
                await ev.wait()
            finally:
                self.waiters.discard(ev)


class Service:
    def __init__(self, model: "Model", model_name: str | None = None, max_batch_size: int = 64,
                 max_queue: int = 256, default_max_tokens: int = 512):
        self.model = model
        self.name = model_name or os.path.splitext(os.path.basename(model.path))[0]
        model.scheduler.max_running = max_batch_size
        self.runner = Runner(model)
        self.metrics = Metrics(model)
        self.inflight = 0
        self.limit = max_batch_size + max_queue
        self.default_max_tokens = default_max_tokens

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.runner.start(loop)

    def stop(self) -> None:
        self.runner.stop()

    def check_model(self, body: dict) -> None:
        m = body.get("model")
        if m is not None and m != self.name and m not in self.model.adapter_names:
            raise P.APIError(404, f"the model {m!r} does not exist (this server has "
                                  f"{', '.join(repr(n) for n in self.names())})", param="model",
                             code="model_not_found")

    def names(self) -> list[str]:
        """The base model's id, then each LoRA adapter's (llmrt serve --lora)."""
        return [self.name] + list(self.model.adapter_names)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                            "owned_by": "llmrt"} for n in self.names()]}

    def _adapter(self, body: dict, req: P.Request) -> P.Request:
        """A request for an adapter's name runs with that adapter."""
        aid = self.model.adapter_names.get(body.get("model"))
        if aid:
            req.params = dataclasses.replace(req.params, lora=aid)
        return req

    # ---- generation ----
    async def completions(self, body: dict) -> dict | AsyncIterator[bytes]:
        req = self._adapter(body, P.parse_params(body, chat=False,
                                                 default_max_tokens=self.default_max_tokens))
        return await self._run(P.prompts_of(body), req, chat=False,
                               add_special=bool(body.get("add_special", True)))

    async def chat(self, body: dict) -> dict | AsyncIterator[bytes]:
        req = self._adapter(body, P.parse_params(body, chat=True,
                                                 default_max_tokens=self.default_max_tokens))
        msgs = P.messages_of(body)
        model = self.model
        try:
            prompt = model.apply_chat_template(msgs)
        except Exception as e:  # noqa: BLE001 - the template's own error
            raise P.bad("messages", f"the chat template failed: {e}") from None
        tok = model.tokenizer
        bos = tok.tokens[tok.bos_id] if tok.bos_id is not None else ""
        return await self._run([prompt], req, chat=True,
                               add_special=not (bos and prompt.startswith(bos)))

    async def _submit(self, prompts: list, req: P.Request, chat: bool,
                      add_special: bool) -> "Job":
        if self.inflight >= self.limit:
            raise P.APIError(503, "the server is at capacity; retry later",
                             type="server_overloaded", headers={"Retry-After": "1"})
        try:
            job = await run_in_threadpool(self.model.submit, prompts,
                                          [req.params] * len(prompts), add_special=add_special,
                                          max_batch_size=1 << 30)
        except ValueError as e:
            msg = str(e)
            if msg.startswith("prompt 0: ") and len(prompts) == 1:
                msg = msg[len("prompt 0: "):]
            param = "response_format" if "response_format:" in msg else \
                "messages" if chat else "prompt"
            raise P.APIError(400, msg, param=param) from None
        self.inflight += 1
        return job

    async def _run(self, prompts: list, req: P.Request, chat: bool,
                   add_special: bool) -> dict | AsyncIterator[bytes]:
        job = await self._submit(prompts, req, chat, add_special)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            return self._stream(job, req, chat, rid, P.now())
        try:
            async for _ in self.runner.events(job):
                pass
        except BaseException:
            job.abandon()
            raise
        finally:
            self.inflight -= 1
        per_prompt = job.results()
        results = [r for rs in per_prompt for r in rs]
        use = self._account(per_prompt, results)
        choices = []
        for k, r in enumerate(results):
            lp = self._logprobs(req, chat, r.logprobs or []) if req.logprobs is not None else None
            if chat:
                choices.append({"index": k, "message": {"role": "assistant", "content": r.text},
                                "logprobs": lp, "finish_reason": r.finish_reason})
            else:
                choices.append({"index": k, "text": r.text, "logprobs": lp,
                                "finish_reason": r.finish_reason})
        return (P.chat_body if chat else P.completion_body)(rid, self.name, P.now(), choices, use)

    def _logprobs(self, req: P.Request, chat: bool, lps: list) -> dict:
        tok = self.model.tokenizer
        return P.chat_logprobs(tok, lps) if chat else P.completion_logprobs(tok, lps)

    def _account(self, per_prompt: list, results: list) -> dict:
        """Metrics of a finished request, and its usage."""
        self.metrics.finished(results)
        ptoks = sum(rs[0].prompt_tokens for rs in per_prompt)
        self.metrics.prompt_tokens.inc(ptoks)
        return P.usage(ptoks, sum(len(r.token_ids) for r in results),
                       sum(rs[0].cached_tokens for rs in per_prompt))

    async def _stream(self, job: "Job", req: P.Request, chat: bool, rid: str,
                      created: int) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        n = req.params.n
        sent: dict[int, int] = {}  # logprobs already sent, per choice

        def chunk(choices: list, use: dict | None = None) -> bytes:
            body: dict = {"id": rid, "object": obj, "created": created, "model": self.name,
                          "choices": choices}
            if req.include_usage:
                body["usage"] = use
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        def new_logprobs(k: int) -> Any:
            if req.logprobs is None:
                return None
            lps = job.tasks[k // n].results()[k % n].logprobs or []
            start, sent[k] = sent.get(k, 0), len(lps)
            return self._logprobs(req, chat, lps[start:sent[k]])

        def choice(k: int, piece: str | None, finish: str | None) -> dict:
            c: dict = {"index": k, "logprobs": new_logprobs(k), "finish_reason": finish}
            if chat:
                c["delta"] = {"content": piece} if piece is not None else {}
            else:
                c["text"] = piece or ""
            return c

        try:
            if chat:
                yield chunk([{"index": k, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}
                             for k in range(len(job.tasks) * n)])
            async for index, piece, sample in self.runner.events(job):
                yield chunk([choice(index * n + sample, piece, None)])
            per_prompt = job.results()
            results = [r for rs in per_prompt for r in rs]
            yield chunk([choice(k, None, r.finish_reason) for k, r in enumerate(results)])
            use = self._account(per_prompt, results)
            if req.include_usage:
                yield chunk([], use)
            yield b"data: [DONE]\n\n"
        except BaseException as e:
            job.abandon()  # the reader went away (or the job failed): its blocks go
            if not isinstance(e, Exception):
                raise
            err = e if isinstance(e, P.APIError) else P.APIError(
                500, f"generation failed: {e}", type="server_error")
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            self.inflight -= 1

    # ---- embeddings ----
    async def embeddings(self, body: dict) -> dict:
        unknown = [k for k in body if k not in ("input", "model", "encoding_format",
                                                "dimensions", "user")]
        if unknown:
            raise P.bad(unknown[0], f"unrecognized request argument: {unknown[0]}")
        inputs = P.inputs_of(body)
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
