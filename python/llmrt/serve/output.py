"""How a request's results are written out: the choices of a JSON body,
or the deltas of a stream (text, logprobs, the echoed prompt, vLLM's
prompt_logprobs, and a chat reply's reasoning_content and tool calls parsed
from it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import tool_use as T
from ..outputs import TokenLogprob
from . import protocol as P

if TYPE_CHECKING:
    from .schema import ParsedRequest
    from .service import Service


class Output:
    def __init__(self, svc: "Service", req: "ParsedRequest", chat: bool, ids: list[list[int]],
                 prompts: list[str] | None, prompt_lps: list | None, reply: "T.Reply | None"):
        self.tok = svc.model.tokenizer
        self.req, self.chat, self.ids, self.prompts = req, chat, ids, prompts or []
        self.prompt_lps = prompt_lps
        self.reply = reply if reply is not None and reply.active else None
        self.n = req.params.n
        self.parsers: dict[int, T.ReplyParser] = {}
        self.sent: dict[int, int] = {}    # logprobs a choice's stream has sent

    # ---- pieces ----
    def _echo_items(self, k: int) -> list:
        """The prompt's tokens as logprob items (the first without one)."""
        i = k // self.n
        lps = self.prompt_lps[i] if self.prompt_lps else None
        if lps is None:
            return []
        first = TokenLogprob(self.ids[i][0], None, [])  # type: ignore[arg-type]
        return [first] + list(lps[1:])

    def _logprobs(self, items: list) -> dict | None:
        if self.req.logprobs is None:
            return None
        return P.chat_logprobs(self.tok, items) if self.chat else \
            P.completion_logprobs(self.tok, items)

    def _prompt_logprobs(self, k: int) -> list | None:
        if self.req.prompt_logprobs is None or not self.prompt_lps:
            return None
        return P.vllm_prompt_logprobs(self.tok, self.prompt_lps[k // self.n])

    # ---- a whole body ----
    def choice(self, k: int, r: Any) -> dict:
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": r.text}
            if self.reply is not None:
                T.finish_reply(r, self.reply, self.tok)
                msg["content"] = r.text
                if self.reply.style is not None:
                    msg["reasoning_content"] = r.reasoning_content
                if r.tool_calls:
                    msg["content"] = r.text or None
                    msg["tool_calls"] = [c.to_openai() for c in r.tool_calls]
            return {"index": k, "message": msg, "logprobs": self._logprobs(r.logprobs or []),
                    "finish_reason": r.finish_reason, "stop_reason": r.stop_string}
        echo = self.req.echo
        text = (self.prompts[k // self.n] if echo else "") + r.text
        items = (self._echo_items(k) if echo else []) + list(r.logprobs or [])
        c = {"index": k, "text": text, "logprobs": self._logprobs(items),
             "finish_reason": r.finish_reason, "stop_reason": r.stop_string}
        plp = self._prompt_logprobs(k)
        if plp is not None:
            c["prompt_logprobs"] = plp
        return c

    # ---- a stream ----
    def _new_logprobs(self, k: int, r: Any) -> dict | None:
        if self.req.logprobs is None:
            return None
        lps = r.logprobs or []
        start, self.sent[k] = self.sent.get(k, 0), len(lps)
        return self._logprobs(lps[start:])

    def first_delta(self, k: int) -> dict | None:
        if self.chat:
            return {"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}
        plp = self._prompt_logprobs(k)
        if not self.req.echo and plp is None:
            return None
        c: dict[str, Any] = {"index": k, "text": self.prompts[k // self.n] if self.req.echo
                             else "", "logprobs": self._logprobs(self._echo_items(k))
                             if self.req.echo else None, "finish_reason": None}
        if plp is not None:
            c["prompt_logprobs"] = plp
        return c

    def _parser(self, k: int) -> "T.ReplyParser":
        assert self.reply is not None
        return self.parsers.setdefault(k, T.ReplyParser(self.reply, self.tok))

    def _pieces(self, k: int, pieces: list, r: Any) -> list[dict]:
        """Deltas of reasoning_content and content; the logprobs so far ride
        on the first."""
        out = [{"index": k, "delta": {"reasoning_content" if kind == "reasoning" else
                                      "content": text}, "logprobs": None,
                "finish_reason": None} for kind, text in pieces if text]
        if out:
            out[0]["logprobs"] = self._new_logprobs(k, r)
        return out

    def delta(self, k: int, piece: str, r: Any) -> list[dict]:
        """The deltas of a text piece of choice k (r: its result so far)."""
        if not self.chat:
            return [{"index": k, "text": piece, "logprobs": self._new_logprobs(k, r),
                     "finish_reason": None}]
        if self.reply is not None:
            return self._pieces(k, self._parser(k).add(piece, r.token_ids), r)
        return [{"index": k, "delta": {"content": piece}, "logprobs": self._new_logprobs(k, r),
                 "finish_reason": None}]

    def last_deltas(self, k: int, r: Any) -> list[dict]:
        """The end of choice k: what was held back, its calls, its finish."""
        if not self.chat:
            return [{"index": k, "text": "", "logprobs": self._new_logprobs(k, r),
                     "finish_reason": r.finish_reason, "stop_reason": r.stop_string}]
        out: list[dict] = []
        finish = r.finish_reason
        if self.reply is not None:
            rest, calls = self._parser(k).finish(r.token_ids)
            out += self._pieces(k, rest, r)
            if calls:
                out.append({"index": k, "delta": {"tool_calls": [
                    {"index": i, **c.to_openai()} for i, c in enumerate(calls)]},
                    "logprobs": None, "finish_reason": None})
                finish = "tool_calls"
        out.append({"index": k, "delta": {}, "logprobs": self._new_logprobs(k, r),
                    "finish_reason": finish, "stop_reason": r.stop_string})
        return out
