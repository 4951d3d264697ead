"""llama-cpp-python reads the mmproj files `llmrt convert` writes.

Both tiny vision families of tests/testutil.py convert with llmrt to f16
files; llama.cpp's libmtmd (llama_cpp.mtmd_cpp) loads the mmproj beside the
text model, tokenizes a prompt holding its media marker with one image and
evaluates the chunks. Compared with llmrt on the same files: the image tokens
each engine makes for the image, the projected embeddings of the same
pixels (mtmd_encode_chunk + mtmd_get_output_embd against
Vision.encode_pixels), the prompt's layout around the image and, for
gemma 3, the decoder's logits after the same tokens.

llama.cpp preprocesses images its own way: gemma 3 letterboxes the image on
black keeping the aspect ratio where transformers and llmrt stretch it (a
test below shows it), and both families resize with their own filters. The
images compared are therefore sized so that no resize happens: for gemma 3
a square image of the tower's size; for idefics3 a square image of the
resize target (preproc_image_size), whose tiles are plain crops in both
engines; only its global view is a downscale, held to a looser bound.
idefics3's tiling is llama.cpp's own code (its sizes rounded its own way):
the tile counts agree for the sizes tried here, wide and tall, which is not
a promise for every size.

The embeddings differ by float rounding only: llama.cpp multiplies f16
weights by f16-rounded activations, llmrt (activations="f32") by float32
ones, so they agree to about 1e-3 of the largest value; the tolerances below
leave a margin of a few times that.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL.Image")
pytest.importorskip("sentencepiece")
pytest.importorskip("safetensors")
llama_cpp = pytest.importorskip("llama_cpp")
try:  # the bindings load libmtmd when imported: an old wheel or a missing library skips
    import llama_cpp.mtmd_cpp as mtmd
except (ImportError, OSError, RuntimeError) as e:  # pragma: no cover - environment
    pytest.skip(f"llama_cpp.mtmd_cpp unavailable: {e}", allow_module_level=True)

import testutil  # noqa: E402  (after the skips: it imports the test helpers' needs)
from testutil import image as _image  # noqa: E402

import llmrt  # noqa: E402
from llmrt.convert import convert  # noqa: E402

EMBED_TOL = 5e-3    # embeddings, of the largest value (observed 4e-4 to 9e-4)
LOGITS_TOL = 1e-2   # logits after the whole prompt (observed 5e-4)
FAR = 0.1           # another image's embeddings differ by more (observed 0.55 to 1.2)


class Mtmd:
    """A text model and its mmproj in llama.cpp, as llama-cpp-python's
    MTMD chat handler drives them, without the chat layer."""

    def __init__(self, model: str, mmproj: str, threads: int = 2):
        self.llm = llama_cpp.Llama(model, n_ctx=1024, n_batch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        p = mtmd.mtmd_context_params_default()
        p.use_gpu, p.n_threads, p.print_timings, p.warmup = False, threads, False, False
        self.ctx = mtmd.mtmd_init_from_file(mmproj.encode(), self.llm.model, p)
        self.chunks = None
        self._bitmap = None

    def close(self) -> None:
        if self.chunks is not None:
            mtmd.mtmd_input_chunks_free(self.chunks)
        if self._bitmap is not None:
            mtmd.mtmd_bitmap_free(self._bitmap)
        if self.ctx:
            mtmd.mtmd_free(self.ctx)
        self.llm.close()  # now, not at interpreter exit (its finalizer fails there)

    def tokenize(self, text: str, img) -> list[tuple[int, object, object]]:
        """The prompt's chunks: (type, text ids or the image's token count, chunk)."""
        if self.chunks is not None:  # the previous prompt's
            mtmd.mtmd_input_chunks_free(self.chunks)
            mtmd.mtmd_bitmap_free(self._bitmap)
            self.chunks = self._bitmap = None
        rgb = np.ascontiguousarray(np.asarray(img.convert("RGB"), np.uint8))
        h, w = rgb.shape[:2]
        self._bitmap = mtmd.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(
            ctypes.POINTER(ctypes.c_uint8)))
        raw = text.replace("<__media__>", mtmd.mtmd_default_marker().decode()).encode()
        it = mtmd.mtmd_input_text()
        it.text, it.text_len, it.add_special, it.parse_special = raw, len(raw), True, True
        self.chunks = mtmd.mtmd_input_chunks_init()
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(self._bitmap)
        rc = mtmd.mtmd_tokenize(self.ctx, self.chunks, ctypes.byref(it), bitmaps, 1)
        assert rc == 0, f"mtmd_tokenize returned {rc}"
        out = []
        for i in range(mtmd.mtmd_input_chunks_size(self.chunks)):
            c = mtmd.mtmd_input_chunks_get(self.chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(c)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                out.append((kind, [ptr[j] for j in range(n.value)], c))
            else:
                out.append((kind, mtmd.mtmd_input_chunk_get_n_tokens(c), c))
        return out

    def encode(self, chunk) -> np.ndarray:
        """One image chunk's projected embeddings (tokens, text width)."""
        assert mtmd.mtmd_encode_chunk(self.ctx, chunk) == 0
        n, d = mtmd.mtmd_input_chunk_get_n_tokens(chunk), self.llm.n_embd()
        return np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self.ctx), (n * d,)) \
            .reshape(n, d).copy()

    def eval(self, chunks) -> np.ndarray:
        """Every chunk through the decoder; the last position's logits."""
        # a token llama.cpp could not find is -1 here and would abort the
        # process inside the helper (GGML_ASSERT): fail the test instead
        bad = [ids for kind, ids, _ in chunks if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT
               and min(ids) < 0]
        assert not bad, f"llama.cpp left unknown tokens (-1) in the prompt: {bad}"
        n_past = llama_cpp.llama_pos(0)
        rc = mtmd.mtmd_helper_eval_chunks(self.ctx, self.llm._ctx.ctx, self.chunks, 0, 0, 512,
                                          True, ctypes.byref(n_past))
        assert rc == 0, f"mtmd_helper_eval_chunks returned {rc}"
        assert n_past.value == sum(len(x) if isinstance(x, list) else x for _, x, _ in chunks)
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1),
                                     (self.llm.n_vocab(),)).copy()


def _rel(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _layout(chunks) -> list[int]:
    """The chunks as one id list, an image's tokens as -2 each."""
    out: list[int] = []
    for kind, x, _ in chunks:
        out += x if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT else [-2] * x
    return out


def _convert(b) -> dict:
    out = str(b["root"] / "m.gguf")
    info = convert(b["dir"], out, "f16", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert m.vision is not None
    return dict(b, path=out, mmproj=info["mmproj"], model=m)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return _convert(testutil.tiny_gemma3_vision(tmp_path_factory.mktemp("g3_llama_cpp")))


@pytest.fixture(scope="module")
def idefics(tmp_path_factory):
    # llama.cpp's idefics3 layout puts the vocabulary's single "\n\n" token
    # before the global view (lookup_token("\n\n"); SmolVLM's vocabulary has
    # one). The tiny BPE trained on VISION_TEXT alone has none: llama.cpp
    # then writes -1 into the prompt. Blank lines in the corpus give it one.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(testutil, "VISION_TEXT", testutil.VISION_TEXT + "One.\n\nTwo.\n\n" * 20)
        b = testutil.tiny_idefics3_vision(tmp_path_factory.mktemp("i3_llama_cpp"))
    return _convert(b)


def test_gemma3_mmproj_in_llama_cpp(gemma):
    m = gemma["model"]
    S = m.vision.mm.image_size
    img = _image(S, S, 7)  # square and of the tower's size: no resize in either engine
    mt = Mtmd(gemma["path"], gemma["mmproj"])
    try:
        assert mt.ctx, "mtmd_init_from_file refused the mmproj (see the log above)"
        assert mtmd.mtmd_support_vision(mt.ctx)
        # llmrt's gemma 3 text around an image is the processor's: "\n\n" on
        # each side of <start_of_image> ... <end_of_image>; llama.cpp adds only
        # the two image tokens, so the prompt given to it carries the "\n\n"s
        chunks = mt.tokenize("Describe \n\n<__media__>\n\n please", img)
        images = [c for c in chunks if c[0] == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
        assert len(images) == 1
        rows = m.vision.embeddings(img).rows
        assert images[0][1] == len(rows) == m.vision.tokens_per_tile
        got = mt.encode(images[0][2])
        px, _ = m.vision.pixels(img)
        ref = m.vision.encode_pixels(px)
        assert got.shape == ref.shape
        assert _rel(got, ref) <= EMBED_TOL
        # ... a tolerance that tells images apart
        other = m.vision.encode_pixels(m.vision.pixels(_image(S, S, 9))[0])
        assert _rel(got, other) > FAR
        # the same token sequence in both engines, then the same logits
        ids = m.prompt_ids("Describe <start_of_image> please", images=[img])
        assert _layout(chunks) == [i if i < m.vocab_size else -2 for i in ids]
        logits = mt.eval(chunks)
        eng = m.engine
        seq = eng.new_sequence()
        try:
            ours = eng.forward(seq, np.asarray(ids, np.int32), "last")
        finally:
            eng.release(seq)
        assert logits.shape == ours.shape and np.all(np.isfinite(logits))
        assert _rel(logits, ours) <= LOGITS_TOL
    finally:
        mt.close()


def test_idefics3_mmproj_in_llama_cpp(idefics):
    m = idefics["model"]
    side = m.vision.mm.longest_edge  # the resize target: tiles are plain crops
    img = _image(side, side, 8)
    mt = Mtmd(idefics["path"], idefics["mmproj"])
    try:
        assert mt.ctx, "mtmd_init_from_file refused the mmproj (see the log above)"
        chunks = mt.tokenize("Describe <__media__> please", img)
        images = [c for c in chunks if c[0] == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
        e = m.vision.embeddings(img)
        rows, cols = e.grid
        n = m.vision.tokens_per_tile
        # tiles row by row, then the global view, in both
        assert (rows, cols) == (2, 2)
        assert [c[1] for c in images] == [n] * (rows * cols + 1)
        assert sum(c[1] for c in images) == len(e.rows)
        px, _ = m.vision.pixels(img)
        ref = m.vision.encode_pixels(px).reshape(len(images), n, -1)
        got = np.stack([mt.encode(c[2]) for c in images])
        for t in range(rows * cols):
            assert _rel(got[t], ref[t]) <= EMBED_TOL, f"tile {t}"
        assert _rel(got[1], ref[0]) > FAR  # tiles apart
        # the global view is a downscale (56 -> 28) by llama.cpp's filter
        # against Pillow's LANCZOS: as close as the tiles today (9e-4), but
        # only required to be nearer than another image
        assert _rel(got[-1], ref[-1]) <= FAR / 2
        ids = m.prompt_ids("Describe <image> please", images=[img])
        assert _layout(chunks) == [i if i < m.vocab_size else -2 for i in ids]
        logits = mt.eval(chunks)
        assert np.all(np.isfinite(logits))
        # other shapes: the same tiles, row by row, and the global view
        for w, h in ((100, 20), (20, 100), (73, 41)):
            im = _image(w, h, 10)
            counts = [c[1] for c in mt.tokenize("<__media__>", im)
                      if c[0] == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
            r, c = m.vision.embeddings(im).grid
            assert counts == [n] * (r * c + (r > 0)), (w, h)
    finally:
        mt.close()


def test_gemma3_llama_cpp_letterboxes(gemma):
    # why the comparison above takes a square image: for a wide one llama.cpp
    # pads to a square on black (keeping the aspect ratio) where llmrt, as
    # transformers, stretches; its embeddings are then near the padded
    # image's in llmrt and far from the stretched one's
    from PIL import Image
    m = gemma["model"]
    S = m.vision.mm.image_size
    img = _image(2 * S, S, 11)
    padded = Image.new("RGB", (2 * S, 2 * S))
    padded.paste(img, (0, S // 2))
    mt = Mtmd(gemma["path"], gemma["mmproj"])
    try:
        chunk = [c for c in mt.tokenize("<__media__>", img)
                 if c[0] == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE][0]
        got = mt.encode(chunk[2])
    finally:
        mt.close()
    stretched = m.vision.encode_pixels(m.vision.pixels(img)[0])
    boxed = m.vision.encode_pixels(m.vision.pixels(padded)[0])
    assert _rel(got, boxed) < FAR < _rel(got, stretched)
