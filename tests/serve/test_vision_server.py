"""Images through `llmrt serve`: a tiny random Gemma 3 vision model
(converted with its mmproj) behind the server, driven by the official
openai and anthropic clients. Chat completions (OpenAI's image_url parts,
streamed too), Anthropic's image blocks and the Responses API's input_image
parts give what model.chat gives on the same image; an image sent twice is
encoded once; every bad image is a 400 in the API's error object naming the
part; http(s) image URLs only with --allow-image-urls, fetched within the
byte and time limits."""

from __future__ import annotations

import base64
import http.server
import io
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
PILImage = pytest.importorskip("PIL.Image")
pytest.importorskip("sentencepiece")
pytest.importorskip("safetensors")

from testutil import tiny_gemma3_vision

import llmrt
from llmrt.convert import convert
from llmrt.testing.server import KEY, metric, start

LIMIT = 60_000          # --max-image-bytes of the servers here
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = "What is it?"


def _png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)  # noise: PNG cannot shrink it, so size ~ 3 w h
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def _huge_header() -> bytes:
    """A valid small PNG whose IHDR claims 20000 x 20000 (CRC recomputed):
    cheap to send, refused on its header before any pixel is decoded."""
    b = bytearray(_png(8, 8, 0))
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", 20000, 20000)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def _msgs(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": ASK}]}]


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "low"}}


@pytest.fixture(scope="module")
def vision_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_vision")
    d = tiny_gemma3_vision(root)
    out = str(root / "g3.gguf")
    info = convert(d["dir"], out, "f32", progress=False)
    assert info["mmproj"]  # written beside the model, found there by llmrt.Model
    return out


@pytest.fixture(scope="module")
def vserver(vision_path):
    s = start(vision_path, "--api-key", KEY, "--batch-invariant", "--threads", "2",
              "--max-images", "2", "--max-image-bytes", str(LIMIT))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def vref(vision_path):
    """The same model in-process: what model.chat gives on an image."""
    m = llmrt.Model(vision_path, threads=2, batch_invariant=True)
    assert m.vision is not None
    return m


def _ref_chat(ref, data: bytes, **kw):
    img = PILImage.open(io.BytesIO(data))
    return ref.chat([{"role": "user", "content": [{"type": "image", "image": img},
                                                  {"type": "text", "text": ASK}]}], **kw)


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_chat_image_equals_model_chat_and_is_encoded_once(vserver, vref):
    c = _client(vserver)
    data = _png(40, 50, 1)
    kw = dict(model=vserver.name, messages=_msgs(_image_part(_uri(data))), max_tokens=8,
              temperature=1.0, seed=3, logprobs=True, top_logprobs=1)
    before = metric(vserver, "llmrt_images_encoded_total")
    r = c.chat.completions.create(**kw)
    want = _ref_chat(vref, data, max_new_tokens=8, temperature=1.0, seed=3)
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == want.prompt_tokens  # the image's 16 tokens among them
    assert metric(vserver, "llmrt_images_encoded_total") == before + 1
    again = c.chat.completions.create(**kw)  # the same image: from the encoder's cache
    assert again.choices[0].message.content == r.choices[0].message.content
    assert metric(vserver, "llmrt_images_encoded_total") == before + 1
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # and the prefix cache
    # the image reaches the model: another one moves the first token's logprob
    other = c.chat.completions.create(**{**kw, "messages": _msgs(_image_part(_uri(_png(40, 50, 2))))})
    lp = [x.choices[0].logprobs.content[0].top_logprobs[0].logprob for x in (r, other)]
    assert lp[0] != lp[1]


def test_stream_with_an_image(vserver):
    c = _client(vserver)
    part = {"type": "image_url", "image_url": _uri(_png(30, 20, 4))}  # the URL as a string
    kw = dict(model=vserver.name, messages=_msgs(part), max_tokens=10, temperature=0.9, seed=5)
    full = c.chat.completions.create(**kw).choices[0].message.content
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == full
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_anthropic_image_block(vserver, vref):
    anthropic = pytest.importorskip("anthropic")
    c = anthropic.Anthropic(base_url=vserver.url, api_key=KEY, max_retries=0, timeout=60)
    data = _png(33, 27, 6)
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(data).decode()}}
    r = c.messages.create(model=vserver.name, max_tokens=6, system="Be brief.", extra_body={"temperature": 0},
                          messages=[{"role": "user", "content": [
                              block, {"type": "text", "text": ASK}]}])
    img = PILImage.open(io.BytesIO(data))
    want = vref.chat([{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "image", "image": img},
                                                   {"type": "text", "text": ASK}]}],
                     max_new_tokens=6, temperature=0)
    assert r.content[0].text == want.text
    assert r.usage.input_tokens == want.prompt_tokens
    # a URL source without --allow-image-urls: Anthropic's error, the block named
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model=vserver.name, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    body = e.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("messages[0].content[0].source.url: image URLs "
                                               "are not allowed")
    # an undecodable image: the same shape, the system prompt not counted in the place
    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                       "data": base64.b64encode(data[:200]).decode()}}
    r = httpx.post(vserver.url + "/v1/messages", headers=AUTH, timeout=60, json={
        "max_tokens": 4, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": ASK}, bad]}]})
    assert r.status_code == 400 and "Traceback" not in r.text
    assert r.json()["error"]["message"].startswith("messages[0].content[1]: ")
    assert "truncated" in r.json()["error"]["message"]


def test_responses_input_image(vserver, vref):
    c = _client(vserver)
    data = _png(25, 45, 7)
    r = c.responses.create(model=vserver.name, max_output_tokens=8, temperature=1.0,
                           input=[{"role": "user", "content": [
                               {"type": "input_image", "image_url": _uri(data)},
                               {"type": "input_text", "text": ASK}]}],
                           extra_body={"seed": 9})
    want = _ref_chat(vref, data, max_new_tokens=8, temperature=1.0, seed=9)
    assert r.output_text == want.text
    assert r.usage.input_tokens == want.prompt_tokens
    rr = httpx.post(vserver.url + "/v1/responses", headers=AUTH, timeout=60, json={
        "instructions": "Be brief.", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": ASK}, {"type": "input_image", "image_url": _uri(b"xyz")}]}]})
    err = rr.json()["error"]
    assert rr.status_code == 400 and err["type"] == "invalid_request_error"
    assert err["param"] == "input[0].content[1]" and "not an image" in err["message"]


def test_image_with_tools_and_n(vserver):
    tool = {"type": "function", "function": {"name": "describe", "parameters": {
        "type": "object", "properties": {"what": {"type": "string"}}}}}
    r = httpx.post(vserver.url + "/v1/chat/completions", headers=AUTH, timeout=60, json={
        "messages": [{"role": "system", "content": "You see images."},
                     *_msgs(_image_part(_uri(_png(22, 22, 11))))],
        "tools": [tool], "n": 2, "max_tokens": 6, "seed": 1})
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]


GOOD = _png(40, 50, 1)
BAD_CASES = {  # name: (content parts, the part named, the message's words)
    "not base64": ([_image_part("data:image/png;base64,***not base64***")], 0, "base64"),
    "truncated PNG": ([_image_part(_uri(GOOD[:len(GOOD) // 2]))], 0, "truncated"),
    "1x1 image": ([_image_part(_uri(_png(1, 1, 0)))], 0, "too small"),
    "20000x20000 header": ([_image_part(_uri(_huge_header()))], 0, "too large"),
    "not an image type": ([_image_part(_uri(b"hello", "text/plain"))], 0, "not an image"),
    "http URL": ([_image_part("http://127.0.0.1:9/a.png")], 0, "URLs are not allowed"),
    "file URL": ([_image_part("file:///etc/passwd")], 0, "data:image/...;base64"),
    "too many images": ([_image_part(_uri(GOOD))] * 3, 2, "at most 2"),
    "over the byte limit": ([_image_part(_uri(_png(200, 200, 8)))], 0, "over this server's limit"),
    "wrong type": ([{"type": "image_file", "image_file": {"file_id": "f"}}], 0,
                   "content parts are text or images"),
    "no URL": ([{"type": "image_url", "image_url": {"detail": "low"}}], 0, "as a string"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_images_are_400s(vserver, case):
    parts, at, words = BAD_CASES[case]
    r = httpx.post(vserver.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"messages": _msgs(*parts), "max_tokens": 4})
    assert r.status_code == 400, r.text
    assert "Traceback" not in r.text and "File \"" not in r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == f"messages[0].content[{at}]"
    assert err["message"].startswith(f"messages[0].content[{at}]") and words in err["message"]


def test_images_only_in_user_messages(vserver):
    msgs = [{"role": "user", "content": ASK},
            {"role": "assistant", "content": [_image_part(_uri(GOOD))]}]
    r = httpx.post(vserver.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"messages": msgs, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].content"


def test_text_model_refuses_images(server):
    r = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"messages": _msgs(_image_part(_uri(GOOD))), "max_tokens": 4})
    assert r.status_code == 400 and "Traceback" not in r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "messages[0].content[0]"
    assert "does not take images" in err["message"]


# ---- --allow-image-urls -----------------------------------------------------------------------

BIG = _png(200, 200, 8)  # over LIMIT


class _Site(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/img.png":
            self._send(GOOD)
        elif self.path == "/big.png":  # says how big it is
            self._send(BIG)
        elif self.path == "/big-unsized.png":  # does not: counted as it comes
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(BIG)
            self.close_connection = True
        elif self.path == "/slow.png":  # a byte at a time: each read quick, all too slow
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            try:
                for b in GOOD[:40]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        else:
            self.send_error(404)

    def _send(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def url_server(vision_path):
    with pytest.MonkeyPatch.context() as mp:  # the fetch goes to 127.0.0.1 whatever proxy is set
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        s = start(vision_path, "--api-key", KEY, "--batch-invariant", "--threads", "1",
                  "--allow-image-urls", "--image-url-timeout", "1",
                  "--max-image-bytes", str(LIMIT))
    yield s
    s.stop()


def test_image_urls_with_the_flag(url_server, site, vref):
    c = _client(url_server)
    r = c.chat.completions.create(model=url_server.name, messages=_msgs(_image_part(site + "/img.png")),
                                  max_tokens=8, temperature=1.0, seed=3)
    want = _ref_chat(vref, GOOD, max_new_tokens=8, temperature=1.0, seed=3)
    assert r.choices[0].message.content == want.text
    for path, words in (("/big.png", "over this server's limit"),
                        ("/big-unsized.png", "over this server's limit"),
                        ("/slow.png", "took longer than 1 s"),
                        ("/to-file", "redirect not followed"),
                        ("/missing.png", "HTTP 404")):
        t0 = time.monotonic()
        r = httpx.post(url_server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                       json={"messages": _msgs(_image_part(site + path)), "max_tokens": 4})
        assert r.status_code == 400, (path, r.text)
        err = r.json()["error"]
        assert err["param"] == "messages[0].content[0]" and words in err["message"], (path, err)
        assert time.monotonic() - t0 < 10
