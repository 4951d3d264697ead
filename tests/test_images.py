"""llmrt.images against transformers' PIL image processors, and its refusal of bad input."""

from __future__ import annotations

import base64
import io
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
ImageFile = pytest.importorskip("PIL.ImageFile")
try:  # the comparisons with the Hugging Face processors need transformers; the rest does not
    import transformers
except ImportError:
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed")

from llmrt.images import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    ImageError,
    image_hash,
    load_image,
    preprocess_gemma3,
    preprocess_idefics3,
)

# transformers 5.x names the PIL backends *Pil (the plain names are torchvision); 4.x's plain names are the PIL ones.
GemmaProc = transformers and (getattr(transformers, "Gemma3ImageProcessorPil", None) or
                              transformers.Gemma3ImageProcessor)
IdeficsProc = transformers and (getattr(transformers, "Idefics3ImageProcessorPil", None) or
                                transformers.Idefics3ImageProcessor)
SmolProc = transformers and (getattr(transformers, "SmolVLMImageProcessorPil", None) or
                             getattr(transformers, "SmolVLMImageProcessor", None))

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
TOL = 1e-5


def _rand(h, w, c, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


def _png(arr_or_img) -> bytes:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _image(kind: str, h: int, w: int, seed: int):
    """Test inputs of the modes an upload may have: (input given to HF, input given to load_image)."""
    a = _rand(h, w, 4, seed)
    if kind == "RGB":
        im = Image.fromarray(a[:, :, :3])
    elif kind == "RGBA":  # random alpha, composited on white
        im = Image.fromarray(a)
    elif kind == "L":
        im = Image.fromarray(a[:, :, 0])
    elif kind == "LA":
        im = Image.fromarray(a[:, :, 0])
        im.putalpha(Image.fromarray(a[:, :, 3]))
    elif kind == "P":
        im = Image.fromarray(a[:, :, :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif kind == "P+transparency":  # palette index 3 transparent: composited on white too
        im = Image.fromarray(a[:, :, :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        im.info["transparency"] = 3
    elif kind == "CMYK":
        im = Image.fromarray(a[:, :, :3]).convert("CMYK")
    elif kind == "I;16":
        im = Image.fromarray((a[:, :, 0].astype(np.uint16) * 257)[:, :])
    elif kind == "np-RGB":
        return a[:, :, :3].copy(), a[:, :, :3].copy()
    elif kind == "np-RGBA":
        return a, a
    elif kind == "png-RGBA":  # encoded: load_image decodes it, HF gets the decoded PIL image
        data = _png(a)
        return Image.open(io.BytesIO(data)), data
    else:
        raise AssertionError(kind)
    return im, im.copy()


GEMMA_CASES = [
    ("RGB", 37, 53, 56),
    ("L", 17, 300, 56),
    ("RGBA", 600, 1000, 224),
    ("P", 512, 512, 224),
    ("P+transparency", 53, 37, 56),
    ("LA", 2, 2, 56),
    ("CMYK", 64, 48, 56),
    ("I;16", 40, 30, 56),
    ("np-RGB", 45, 61, 56),
    ("np-RGBA", 61, 45, 224),
    ("png-RGBA", 300, 17, 56),
]


@needs_hf
@pytest.mark.parametrize("kind,h,w,size", GEMMA_CASES)
def test_gemma3_equals_hf(kind, h, w, size):
    hf_in, our_in = _image(kind, h, w, seed=h * 7 + w)
    proc = GemmaProc(size={"height": size, "width": size}, image_mean=MEAN, image_std=STD, do_pan_and_scan=False)
    want = np.asarray(proc(hf_in, return_tensors="np")["pixel_values"])
    got = preprocess_gemma3(load_image(our_in), size=size, mean=MEAN, std=STD)
    assert got.dtype == np.float32 and got.shape == (3, size, size)
    assert want.shape == (1, 3, size, size)
    assert np.abs(got - want[0]).max() <= TOL


IDEFICS_CASES = [
    # kind, h, w, longest_edge, max_image_size, split, (rows, cols)
    ("RGBA", 37, 53, 112, 28, True, (3, 4)),
    ("L", 17, 300, 112, 28, True, (1, 4)),
    ("RGB", 300, 17, 112, 28, True, (4, 1)),
    ("RGB", 600, 1000, 112, 28, True, (3, 4)),
    ("P", 512, 512, 112, 28, True, (4, 4)),
    ("np-RGBA", 13, 20, 112, 28, True, (3, 4)),  # small images are scaled UP to longest_edge
    ("CMYK", 1000, 600, 112, 28, False, (0, 0)),
    ("P+transparency", 90, 70, 28, 28, True, (0, 0)),  # already one tile: no global view
    ("RGB", 50, 80, 20, 28, True, (0, 0)),  # longest_edge < tile: stretched up to one tile
    ("np-RGB", 600, 1000, 4 * 364, 364, True, (3, 4)),
]


@needs_hf
@pytest.mark.parametrize("kind,h,w,longest,tile,split,grid", IDEFICS_CASES)
def test_idefics3_equals_hf(kind, h, w, longest, tile, split, grid):
    hf_in, our_in = _image(kind, h, w, seed=h * 5 + w)
    proc = IdeficsProc(size={"longest_edge": longest}, max_image_size={"longest_edge": tile}, image_mean=MEAN,
                       image_std=STD, do_image_splitting=split)
    out = proc(hf_in, return_tensors="np", return_row_col_info=True)
    want = np.asarray(out["pixel_values"])
    got, rows, cols = preprocess_idefics3(load_image(our_in), longest_edge=longest, max_image_size=tile, mean=MEAN,
                                          std=STD, do_image_splitting=split)
    assert (rows, cols) == (out["rows"][0][0], out["cols"][0][0]) == grid
    n = rows * cols + 1 if rows else 1
    assert got.dtype == np.float32 and got.shape == (n, 3, tile, tile)
    assert want.shape == (1, n, 3, tile, tile)
    assert np.all(np.asarray(out["pixel_attention_mask"]) == 1)  # a single image is never padded
    assert np.abs(got - want[0]).max() <= TOL


@needs_hf
@pytest.mark.skipif(not SmolProc, reason="transformers without SmolVLM")
@pytest.mark.parametrize("kind,h,w,split", [("RGBA", 37, 53, True), ("RGB", 1000, 600, True), ("L", 80, 20, False)])
def test_smolvlm_processor_is_the_same(kind, h, w, split):
    hf_in, our_in = _image(kind, h, w, seed=3)
    proc = SmolProc(size={"longest_edge": 112}, max_image_size={"longest_edge": 28}, image_mean=MEAN, image_std=STD,
                    do_image_splitting=split)
    out = proc(hf_in, return_tensors="np", return_row_col_info=True)
    got, rows, cols = preprocess_idefics3(our_in, longest_edge=112, max_image_size=28, mean=MEAN, std=STD,
                                          do_image_splitting=split)
    assert (rows, cols) == (out["rows"][0][0], out["cols"][0][0])
    assert np.abs(got - np.asarray(out["pixel_values"])[0]).max() <= TOL


# --- loading ---------------------------------------------------------------------------------------------------


def test_sources_load_the_same_pixels(tmp_path):
    a = _rand(23, 31, 3, 1)
    data = _png(a)
    p = tmp_path / "x.png"
    p.write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    wrapped = "data:image/png;base64,\n" + "\n".join(uri[22 + i:22 + i + 40] for i in range(0, len(uri) - 22, 40))
    for src in (str(p), p, data, bytearray(data), memoryview(data), uri, wrapped, uri.rstrip("="), Image.fromarray(a),
                a, a.astype(np.float32) / 255):
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (31, 23)
        np.testing.assert_array_equal(np.asarray(im), a)
    assert len({image_hash(load_image(s)) for s in (data, uri, a)}) == 1


def test_grey_array_and_float_rgba():
    g = _rand(5, 7, 0, 2)
    np.testing.assert_array_equal(np.asarray(load_image(g)), np.repeat(g[:, :, None], 3, axis=2))
    rgba = np.zeros((4, 4, 4), np.float32)
    rgba[..., 0] = 1.0
    rgba[..., 3] = 0.5  # half-transparent red over white
    np.testing.assert_array_equal(np.asarray(load_image(rgba))[0, 0], [255, 128, 128])


def test_image_hash_tracks_pixels():
    a = _rand(8, 9, 3, 4)
    b = a.copy()
    b[3, 4, 1] ^= 1
    assert image_hash(load_image(a)) == image_hash(load_image(a.copy()))
    assert image_hash(load_image(a)) != image_hash(load_image(b))
    assert image_hash(load_image(a)) != image_hash(load_image(a.transpose(1, 0, 2).copy()))


def test_exif_orientation_is_applied():
    a = _rand(10, 20, 3, 5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", exif=exif, quality=95)
    im = load_image(buf.getvalue())
    assert im.size == (10, 20)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(im), np.rot90(decoded, k=-1))


# --- bad input -------------------------------------------------------------------------------------------------


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height RGB, with a few bytes of pixel data: cheap to build,
    impossible to decode fully."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def _refused(src, match, **kw):
    with pytest.raises(ImageError, match=match):
        load_image(src, **kw)


def test_truncated_png_is_refused():
    data = _png(_rand(300, 200, 3, 6))
    for cut in (len(data) // 2, 100):
        _refused(data[:cut], "truncated or corrupt")
    _refused(data[:20], "not an image|could not be decoded")
    _refused(_png_header(64, 64), "truncated or corrupt")


def test_truncated_png_is_refused_even_when_pillow_is_told_to_pad(monkeypatch):
    data = _png(_rand(300, 200, 3, 6))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _refused(data[: len(data) // 2], "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # someone else's setting, restored


def test_too_small_is_refused():
    _refused(_png(_rand(1, 1, 3, 7)), r"too small: 1x1")
    _refused(_png(_rand(1, 50, 3, 7)), r"too small: 50x1")
    _refused(Image.new("RGB", (1, 1)), "too small")
    _refused(np.zeros((1, 1, 3), np.uint8), "too small")
    _refused(np.zeros((0, 5, 3), np.uint8), "too small")
    assert load_image(np.zeros((1, 1, 3), np.uint8), min_side=1).size == (1, 1)


def test_too_many_pixels_is_refused_from_the_header():
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _refused(_png_header(20000, 20000), "too large")  # above Pillow's own bomb limit
        _refused(_png_header(10000, 10000), r"too large: 10000x10000 = 100,000,000 pixels")  # Pillow only warns
        _refused(_png_header(8000, 7000), rf"limit is {DEFAULT_MAX_PIXELS:,}")
    assert time.perf_counter() - t < 1.0  # nothing was decoded
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    _refused(_png(_rand(100, 100, 3, 8)), "too large", max_pixels=5000)
    _refused(Image.new("RGB", (100, 100)), "too large", max_pixels=5000)
    _refused(np.zeros((100, 100), np.uint8), "too large", max_pixels=5000)


def test_undecodable_bytes_are_refused():
    _refused(np.random.default_rng(9).bytes(4096), "not an image")
    _refused(b"", "not an image")
    ppm = b"P6 4 4 255\n" + bytes(48)  # Pillow reads PPM, uploads have no business being one
    assert Image.open(io.BytesIO(ppm)).size == (4, 4)
    _refused(ppm, "supported format")


def test_bad_strings_and_paths_are_refused(tmp_path):
    _refused(str(tmp_path / "missing.png"), "no such image file")
    _refused(tmp_path / "missing.png", "no such image file")
    _refused(str(tmp_path), "no such image file")  # a directory
    _refused("https://example.com/cat.png", "URLs are not fetched")
    _refused(base64.b64encode(_png(_rand(4, 4, 3, 0))).decode(), "no such image file")  # bare base64: no
    (tmp_path / "notes.txt").write_text("hello")
    _refused(str(tmp_path / "notes.txt"), "not an image")


def test_bad_data_uris_are_refused():
    _refused("data:image/png;base64,@@@@not base64!!", "invalid base64")
    _refused("data:image/png;base64,QUJD=E", "invalid base64")
    _refused("data:image/png,rawbytes", "base64")
    _refused("data:text/plain;base64,aGVsbG8=", "media type 'text/plain'")
    _refused("data:image/png;base64", "no ','")
    _refused("data:image/png;base64," + base64.b64encode(b"hello world").decode(), "not an image")


@pytest.mark.parametrize("src", [None, 42, 3.5, ["x.png"], {"url": "x"}, object()])
def test_wrong_types_are_refused(src):
    _refused(src, "unsupported image input type")


@pytest.mark.parametrize("arr,match", [
    (np.zeros((8, 8, 3), np.int64), "dtype int64"),
    (np.zeros((8, 8, 3), np.uint16), "dtype uint16"),
    (np.zeros((8, 8, 3), bool), "dtype bool"),
    (np.zeros((8, 8, 2), np.uint8), r"shape \(H, W\)"),
    (np.zeros((8, 8, 5), np.uint8), "shape"),
    (np.zeros((3, 8, 8), np.uint8), "shape"),  # channels first is not guessed
    (np.zeros(64, np.uint8), "shape"),
    (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
    (np.full((8, 8, 3), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((8, 8, 3), np.nan, np.float64), "finite"),
])
def test_bad_arrays_are_refused(arr, match):
    _refused(arr, match)


def test_errors_are_value_errors():
    assert issubclass(ImageError, ValueError)


def test_the_module_imports_without_pillow():
    code = ("import sys; sys.modules['PIL'] = None\n"
            "import llmrt.images as m\n"
            "try:\n    m.load_image(b'x')\nexcept ImportError as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install llmrt[vision]" in out.stdout
