"""Images in requests: OpenAI's image_url content parts, the Responses
API's input_image parts and Anthropic's image blocks, checked in the
request schema (each becomes an ImageRef naming its place in the request),
then loaded under the server's limits (Limits: images a request, bytes and
pixels an image, whether http(s) URLs are fetched) before anything reaches
the model. Every refusal is a 400 that names the part. Each image is
decoded and encoded at once (at most two server-wide at a time: a small
file may decode to hundreds of MB of pixels), so a request holds its
images' embeddings, not their pixels, while it waits and runs.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .. import images as IM
from .protocol import APIError

if TYPE_CHECKING:
    from ..model import Model

TEXT_PARTS = ("text", "input_text", "output_text")
IMAGE_PARTS = ("image_url", "input_image")
MAX_URL_CHARS = 8192  # an http(s) URL; data: URIs are bounded by the body and the byte limit


@dataclass(frozen=True)
class Limits:
    """What a request's images may be (llmrt serve's image flags)."""

    max_images: int = 8                     # a request
    max_bytes: int = 20 << 20               # an image, encoded (a data URI's decoded bytes)
    max_pixels: int = IM.DEFAULT_MAX_PIXELS  # an image, width * height (read from its header)
    allow_urls: bool = False                # fetch http(s) URLs (else only data: URIs)
    url_timeout: float = 10.0               # seconds a URL's fetch may take in all


@dataclass(frozen=True)
class ImageRef:
    """An image part checked for shape, not yet loaded. Not a dict, so a
    translation (Messages, Responses) can hand one to the chat schema with
    its own place in the request, which no JSON body can forge."""

    where: str  # the part in the request, e.g. messages[0].content[1]
    url: str    # a data:image/...;base64,... URI or an http(s) URL

    @property
    def data(self) -> bool:
        return self.url[:5].lower() == "data:"


def _refuse(where: str, message: str, code: str | None = None) -> APIError:
    # the place goes into the message too: Anthropic's error object has no param
    return APIError(400, f"{where}: {message}", param=where, code=code)


def image_ref(url: Any, where: str) -> ImageRef:
    """An image's URL checked for form: a base64 data URI of an image media
    type, or an http(s) URL (whether it may be fetched is the server's call)."""
    if not isinstance(url, str) or not url:
        raise _refuse(where, "an image needs its URL as a string (a data:image/...;base64,... "
                             "URI)", "invalid_image")
    if url[:5].lower() == "data:":
        header, sep, _ = url.partition(",")
        params = [p.strip().lower() for p in header[5:].split(";")]
        if not sep or len(header) > 200:
            raise _refuse(where, "a malformed data URI (data:image/png;base64,...)", "invalid_image")
        if not params[0].startswith("image/"):
            raise _refuse(where, f"the data URI's media type is {params[0][:50]!r}, not an image "
                                 f"(image/png, image/jpeg, ...)", "invalid_image")
        if "base64" not in params[1:]:
            raise _refuse(where, "the data URI must be base64 (data:image/...;base64,...)",
                          "invalid_image")
        return ImageRef(where, url)
    u = urllib.parse.urlsplit(url[:MAX_URL_CHARS])
    if u.scheme.lower() not in ("http", "https") or not u.netloc or len(url) > MAX_URL_CHARS:
        raise _refuse(where, "an image is a data:image/...;base64,... URI or an http(s) URL",
                      "invalid_image_url")
    return ImageRef(where, url)


def part_of(part: Any, where: str) -> dict | ImageRef:
    """One content part of a chat or Responses message: a text part as
    {"type": "text", "text"}, an image part (OpenAI's {"type": "image_url",
    "image_url": {"url", "detail"} or a URL}, the Responses API's {"type":
    "input_image", "image_url"}) as an ImageRef; anything else a 400."""
    if isinstance(part, ImageRef):  # made by a translation, already checked
        return part
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind in IMAGE_PARTS:
        if part.get("file_id") is not None:
            raise _refuse(where, "images by file_id are not supported: send image_url")
        v = part.get("image_url")
        if isinstance(v, dict):  # detail (auto / low / high) is ignored: one resolution
            v = v.get("url")
        return image_ref(v, where)
    raise _refuse(where, f"content parts are text or images (image_url), got "
                         f"{'type ' + repr(kind)[:40] if isinstance(kind, str) else 'an invalid part'}")


def anthropic_block(b: dict, where: str) -> ImageRef:
    """Anthropic's {"type": "image", "source": {"type": "base64", media_type,
    data} or {"type": "url", url}}."""
    src = b.get("source")
    src = src if isinstance(src, dict) else {}
    kind = src.get("type")
    if kind == "base64":
        mt, data = src.get("media_type"), src.get("data")
        if not isinstance(mt, str) or not mt.lower().startswith("image/") or len(mt) > 100:
            raise _refuse(f"{where}.source.media_type", "media_type must be an image type "
                                                        "(image/png, image/jpeg, ...)",
                          "invalid_image")
        if not isinstance(data, str) or not data:
            raise _refuse(f"{where}.source.data", "data must be the image's base64 text",
                          "invalid_image")
        return ImageRef(where, f"data:{mt};base64,{data}")
    if kind == "url":
        url = src.get("url")
        if isinstance(url, str) and url[:5].lower() == "data:":
            raise _refuse(f"{where}.source.url", "a data URI goes in a base64 source")
        return image_ref(url, f"{where}.source.url")
    raise _refuse(f"{where}.source", "an image's source is {\"type\": \"base64\", "
                                     "\"media_type\", \"data\"} or {\"type\": \"url\", \"url\"}")


# ---- loading ------------------------------------------------------------------------------

def refs_in(msgs: list[dict]) -> list[ImageRef]:
    return [p for m in msgs if isinstance(m.get("content"), list) for p in m["content"]
            if isinstance(p, ImageRef)]


def has_images(body: Any) -> bool:
    """Whether a chat body may hold images (any part not text): such a
    request is checked and run off the event loop, its images being decoded
    and encoded on the way."""
    msgs = body.get("messages") if isinstance(body, dict) else None
    return isinstance(msgs, list) and any(
        isinstance(p, ImageRef) or (isinstance(p, dict) and p.get("type") not in TEXT_PARTS)
        for m in msgs if isinstance(m, dict) and isinstance(m.get("content"), list)
        for p in m["content"])


def prepare(model: "Model", limits: Limits, msgs: list[dict]) -> tuple[list[dict], list[Any]]:
    """Chat messages whose content may hold ImageRefs -> the messages for the
    chat template and the decoded images in order (blocking: decodes, and
    fetches where URLs are allowed). The checks that need no decoding come
    first, for every image."""
    refs = refs_in(msgs)
    if not refs:
        return msgs, []
    if model.vision is None:
        raise _refuse(refs[0].where, "this model does not take images (it has no vision "
                                     "encoder: an mmproj file beside the model)")
    if len(refs) > limits.max_images:
        raise _refuse(refs[limits.max_images].where, f"the request holds {len(refs)} images; "
                                                     f"this server takes at most "
                                                     f"{limits.max_images} a request",
                      "too_many_images")
    for r in refs:
        if not r.data and not limits.allow_urls:
            raise _refuse(r.where, "image URLs are not allowed on this server: send the image "
                                   "as a data:image/...;base64,... URI", "invalid_image_url")
    loaded = {id(r): load(r, limits, model.vision) for r in refs}
    out = [{**m, "content": [{"type": "image", "image": loaded[id(p)]} if isinstance(p, ImageRef)
                             else p for p in m["content"]]}
           if isinstance(m.get("content"), list) else m for m in msgs]
    from ..vision import split_images
    return split_images(out)


_DECODING = threading.BoundedSemaphore(2)  # images decoded and encoded at once, server-wide


def load(ref: ImageRef, limits: Limits, vision: Any) -> Any:
    """An image part's embeddings (vision.ImageEmbeds: decoded, encoded,
    cached), or a 400 naming the part."""
    try:
        data = IM._from_data_uri(ref.url) if ref.data else fetch(ref.url, limits, ref.where)
    except IM.ImageError as e:
        raise _refuse(ref.where, _first_line(str(e)), "invalid_image") from None
    if len(data) > limits.max_bytes:
        raise _refuse(ref.where, f"the image is {len(data):,} bytes, over this server's limit "
                                 f"of {limits.max_bytes:,}", "image_too_large")
    with _DECODING:
        try:
            return vision.embeddings(IM.load_image(data, max_pixels=limits.max_pixels))
        except ValueError as e:  # ImageError, or an image the model cannot take
            raise _refuse(ref.where, _first_line(str(e)), "invalid_image") from None


def _first_line(msg: str, limit: int = 300) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else "the image was refused"
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ---- http(s) URLs (--allow-image-urls) -----------------------------------------------------

class _Refused(Exception):
    pass


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects stay on http(s), a few at most: a URL the server was
    allowed to fetch must not lead it to file:// or elsewhere."""

    max_redirections = 3

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _Refused("it redirects to a URL that is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # only the http(s) handlers: no file:, ftp: or data: opener to be led to
    o = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
              urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
              urllib.request.HTTPDefaultErrorHandler(), _Redirects(),
              urllib.request.HTTPErrorProcessor()):
        o.add_handler(h)
    return o


def fetch(url: str, limits: Limits, where: str) -> bytes:
    """An image URL's bytes: at most max_bytes (counted as they arrive,
    whatever Content-Length says) within url_timeout seconds in all (each
    read waits at most that long too), or a 400."""
    t = limits.url_timeout
    deadline = time.monotonic() + t
    req = urllib.request.Request(url, headers={"User-Agent": "llmrt", "Accept": "image/*"})
    try:
        with _opener().open(req, timeout=t) as resp:
            size = resp.headers.get("Content-Length", "")
            if size.isdigit() and int(size) > limits.max_bytes:
                raise _Refused(f"it is {int(size):,} bytes, over this server's limit of "
                               f"{limits.max_bytes:,}")
            chunks, n = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError
                b = resp.read1(1 << 16)
                if not b:
                    break
                n += len(b)
                if n > limits.max_bytes:
                    raise _Refused(f"it is over this server's limit of {limits.max_bytes:,} "
                                   f"bytes")
                chunks.append(b)
            return b"".join(chunks)
    except _Refused as e:
        raise _refuse(where, f"the image URL was refused: {e}", "invalid_image_url") from None
    except urllib.error.HTTPError as e:
        e.close()
        # urllib answers a redirect it will not follow (file:, too many) as the 3xx itself
        why = ", a redirect not followed (only to http(s), at most 3)" if 300 <= e.code < 400 \
            else ""
        raise _refuse(where, f"the image URL answered HTTP {e.code}{why}", "invalid_image_url") \
            from None
    except (TimeoutError, socket.timeout, urllib.error.URLError, OSError, http.client.HTTPException,
            ValueError) as e:
        reason = getattr(e, "reason", e)
        why = f"it took longer than {t:g} s" if isinstance(reason, (TimeoutError, socket.timeout)) \
            else \
            f"could not be fetched ({_first_line(str(reason) or type(reason).__name__, 120)})"
        raise _refuse(where, f"the image URL {why}", "invalid_image_url") from None


# ---- running a prompt that holds images ----------------------------------------------------

async def off_loop(fn: Callable[[dict], Any], body: dict) -> Any:
    """fn(body), in a worker thread where the body may hold images: their
    decoding and the vision tower would otherwise hold the event loop."""
    if not has_images(body):
        return fn(body)
    from starlette.concurrency import run_in_threadpool
    return await run_in_threadpool(fn, body)


def no_images(msgs: list[dict]) -> list[dict]:
    """The messages of an endpoint that counts text tokens only."""
    refs = refs_in(msgs)
    if refs:
        raise _refuse(refs[0].where, "this endpoint counts text only: images are not counted")
    return msgs
