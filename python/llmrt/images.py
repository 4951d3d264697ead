"""Image loading and preprocessing for vision-language models.

``load_image`` turns untrusted input (a path, encoded bytes, a ``data:`` URI, a PIL image or a numpy array) into an
RGB PIL image, refusing anything malformed or oversized with ``ImageError``. ``preprocess_gemma3`` and
``preprocess_idefics3`` turn that image into the float32 tensors the vision towers take; both equal the PIL backends
of transformers' image processors (``Gemma3ImageProcessorPil``, ``Idefics3ImageProcessorPil`` and the identical
``SmolVLMImageProcessorPil`` in transformers 5.x, which were the "slow" processors in 4.x) to float32 rounding.

Pillow is optional (``pip install llmrt[vision]``): it is imported only when one of these functions runs, so the
runtime imports without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IDEFICS3_MAX_LONGEST_EDGE",
    "ImageError",
    "ImageSource",
    "image_hash",
    "load_image",
    "preprocess_gemma3",
    "preprocess_idefics3",
]

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest width * height ``load_image`` accepts by default (checked on the header, before any pixel is decoded)."""

DEFAULT_MIN_SIDE = 2
"""Smallest side ``load_image`` accepts by default: a 1-pixel side has no aspect ratio worth resizing."""

IDEFICS3_MAX_LONGEST_EDGE = 4096
"""transformers' Idefics3/SmolVLM ``MAX_IMAGE_SIZE``: the resized longest edge is capped here whatever ``size``."""

# Encoded formats decoded from untrusted bytes. Pillow knows ~40 formats; several are rarely fuzzed and EPS even runs
# Ghostscript, so only what browsers and phones produce is accepted. (Pillow opens the MPO files some cameras write
# through its JPEG entry, and a name Pillow does not register would raise KeyError, so "MPO" is not listed.)
_ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")

# Serialises the short sections that touch process-wide Pillow / warnings state (see _decode).
_PIL_STATE_LOCK = threading.Lock()

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image.Image", np.ndarray]


class ImageError(ValueError):
    """An image input was refused: wrong type, undecodable, truncated, too small or too large."""


def _pil() -> Any:
    """Import Pillow on first use so that the runtime itself does not need it."""
    try:
        import PIL.Image
        import PIL.ImageFile
        import PIL.ImageOps
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("image input needs Pillow: pip install llmrt[vision]") from e
    return PIL


def _check_size(width: int, height: int, max_pixels: int, min_side: int) -> None:
    if min(width, height) < min_side:
        raise ImageError(f"image is too small: {width}x{height} pixels, each side must be at least {min_side}")
    if width * height > max_pixels:
        raise ImageError(
            f"image is too large: {width}x{height} = {width * height:,} pixels, the limit is {max_pixels:,}"
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    """Flatten any Pillow mode to RGB the way transformers' ``convert_to_rgb`` does for PIL images.

    An image with an alpha band, or a palette / grey image with a ``transparency`` entry, is converted to RGBA and
    composited over opaque white with ``Image.alpha_composite``; every other mode (L, P, CMYK, I;16, F, ...) goes
    through Pillow's own ``convert("RGB")``.
    """
    PIL = _pil()
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _decode(data: Any, what: str, max_pixels: int, min_side: int) -> Image.Image:
    """Decode an encoded image (bytes buffer or open file) to RGB with the size checks done on the header."""
    PIL = _pil()
    try:
        # Image.open only parses the header. Pillow warns (DecompressionBombWarning) above its own MAX_IMAGE_PIXELS
        # and raises above twice that; our own limit is applied right after, so the warning is silenced instead of
        # reaching the caller's log, and the error is turned into ImageError below. The warnings filter is
        # process-wide, hence the lock; the header parse under it is short.
        with _PIL_STATE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            im = PIL.Image.open(data, formats=_ALLOWED_FORMATS)
    except PIL.Image.DecompressionBombError as e:
        raise ImageError(f"{what} is too large to decode safely: {e}") from e
    except PIL.UnidentifiedImageError as e:
        raise ImageError(f"{what} is not an image in a supported format ({', '.join(_ALLOWED_FORMATS)})") from e
    except Exception as e:  # untrusted bytes: whatever the parser raised, the input is bad
        raise ImageError(f"{what} could not be decoded: {e}") from e

    width, height = im.size
    _check_size(width, height, max_pixels, min_side)

    def load() -> Image.Image:
        im.load()
        # Camera photos store their orientation in EXIF; transformers' load_image applies it, and so do we.
        upright = PIL.ImageOps.exif_transpose(im)
        return _to_rgb(upright)

    try:
        # A truncated file must raise, not come back padded with grey. That is Pillow's default, but it is a
        # process-wide flag that other code may have switched on: then switch it off for this call only.
        if PIL.ImageFile.LOAD_TRUNCATED_IMAGES:
            with _PIL_STATE_LOCK:
                saved = PIL.ImageFile.LOAD_TRUNCATED_IMAGES
                PIL.ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    rgb = load()
                finally:
                    PIL.ImageFile.LOAD_TRUNCATED_IMAGES = saved
        else:
            rgb = load()
    except PIL.Image.DecompressionBombError as e:
        raise ImageError(f"{what} is too large to decode safely: {e}") from e
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{what} is truncated or corrupt: {e}") from e
    finally:
        im.close()
    # Animated GIF frames may be larger than the header's screen size.
    _check_size(rgb.width, rgb.height, max_pixels, min_side)
    return rgb


def _from_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ImageError("malformed data URI: no ',' between the header and the data")
    params = header[len("data:") :].split(";")
    media_type = params[0].strip().lower()
    if media_type and not media_type.startswith("image/"):
        raise ImageError(f"data URI has media type {media_type!r}, expected image/*")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise ImageError("data URI must be base64-encoded (data:image/...;base64,...)")
    # Line breaks are common in hand-made URIs and missing '=' padding in URL-sourced ones; anything else outside the
    # base64 alphabet is an error rather than silently skipped.
    text = "".join(payload.split())
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"data URI has invalid base64 data: {e}") from e


def _from_array(arr: np.ndarray, max_pixels: int, min_side: int) -> Image.Image:
    PIL = _pil()
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"numpy image must have shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    height, width = arr.shape[:2]
    _check_size(width, height, max_pixels, min_side)
    if arr.dtype == np.uint8:
        pixels = arr.astype(np.float64) if arr.ndim == 3 and arr.shape[2] == 4 else arr
        white = 255.0
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageError("float numpy image must hold finite values in [0, 1]")
        pixels = arr.astype(np.float64)
        white = 1.0
    else:
        raise ImageError(f"numpy image must be uint8, or float in [0, 1]; got dtype {arr.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.shape[2] == 4:
        # Same blend as transformers' convert_to_rgb on arrays: alpha-weighted over white, rounded to the nearest.
        alpha = pixels[:, :, 3:4] / white
        pixels = alpha * pixels[:, :, :3] + (1.0 - alpha) * white
    if white == 1.0:
        pixels = pixels * 255.0
    u8 = np.ascontiguousarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    return PIL.Image.fromarray(u8)


def load_image(
    src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> Image.Image:
    """Load an image from untrusted input as an RGB PIL image.

    ``src`` may be a path (str or os.PathLike) to an image file; the encoded bytes of an image (bytes, bytearray,
    memoryview); a ``data:image/...;base64,...`` URI; a PIL image; or a numpy array of shape (H, W), (H, W, 3) or
    (H, W, 4), uint8 or float in [0, 1] (floats are scaled by 255 and rounded). URLs are not fetched.

    Transparency is composited over white and other modes converted as transformers' ``convert_to_rgb`` does
    (arrays: its numpy blend, rounded). Encoded input gets its EXIF orientation applied, as transformers'
    ``load_image`` does; PIL images and arrays are taken as they are. PNG, JPEG, GIF (first frame), WebP, BMP and
    TIFF are decoded.

    Raises ImageError (a ValueError) for a wrong type, undecodable or truncated data, a side shorter than
    ``min_side`` or more than ``max_pixels`` pixels; the pixel limit is checked on the header, before decoding.
    """
    PIL = _pil()
    if isinstance(src, PIL.Image.Image):
        _check_size(src.width, src.height, max_pixels, min_side)
        try:
            src.load()  # a lazily opened image still decodes here
            return _to_rgb(src)
        except Exception as e:
            raise ImageError(f"PIL image could not be loaded: {e}") from e
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels, min_side)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(src)), "image data", max_pixels, min_side)
    if isinstance(src, str) and src[:5].lower() == "data:":
        return _decode(io.BytesIO(_from_data_uri(src)), "data URI image", max_pixels, min_side)
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            shown = repr(path if len(path) <= 200 else path[:200] + "...")
            if isinstance(path, str) and path.lower().startswith(("http://", "https://")):
                raise ImageError(f"URLs are not fetched here, download the image first: {shown}")
            raise ImageError(
                f"not a data: URI and no such image file: {shown} "
                "(pass an encoded image as bytes or as a data:image/...;base64,... URI)"
            )
        try:
            f = open(path, "rb")
        except OSError as e:
            raise ImageError(f"cannot read image file {path!r}: {e}") from e
        with f:
            return _decode(f, f"image file {path!r}", max_pixels, min_side)
    raise ImageError(
        "unsupported image input type "
        f"{type(src).__name__}: expected a path, bytes, a data: URI, a PIL image or a numpy array"
    )


def image_hash(img: Image.Image) -> str:
    """Hex sha256 of an image's mode, size and raw pixel bytes: equal pixels give equal keys, whatever the source."""
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _as_rgb(img: Image.Image | ImageSource) -> Image.Image:
    PIL = _pil()
    if isinstance(img, PIL.Image.Image) and img.mode == "RGB" and img.info.get("transparency") is None:
        return img
    return load_image(img)


def _normalize(u8_hwc: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), rounded exactly as transformers' numpy rescale + normalize.

    transformers rescales in float64 (``x.astype(float64) * (1/255)``) and casts to float32, then normalizes in
    float32 with float32 mean/std; doing the same steps in the same dtypes gives bit-identical values.
    """
    x = (u8_hwc.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def _mean_std(mean: float | Sequence[float], std: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m = np.broadcast_to(np.asarray(mean, dtype=np.float32), (3,))
    s = np.broadcast_to(np.asarray(std, dtype=np.float32), (3,))
    if not np.all(s != 0):
        raise ValueError(f"std must be non-zero, got {std}")
    return m, s


def preprocess_gemma3(
    img: Image.Image | ImageSource, *, size: int, mean: float | Sequence[float], std: float | Sequence[float]
) -> np.ndarray:
    """Gemma 3 vision input: float32 (3, size, size).

    Equal to transformers' ``Gemma3ImageProcessorPil`` (5.x; ``Gemma3ImageProcessor`` in 4.x) with
    ``do_pan_and_scan=False``: the uint8 RGB image is stretched to size x size (no aspect kept) by Pillow's BILINEAR
    resize, then rescaled by 1/255 and normalized. In 5.x ``Gemma3ImageProcessor`` and the default
    ``AutoImageProcessor`` (when torchvision is installed) are the torchvision backend, whose antialiased tensor
    resize differs by a few 1e-3; released checkpoints use mean = std = 0.5, size 896.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    m, s = _mean_std(mean, std)
    PIL = _pil()
    resized = _as_rgb(img).resize((size, size), resample=PIL.Image.Resampling.BILINEAR)
    return _normalize(np.asarray(resized), m, s)


def _idefics3_resized_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """Output (height, width) of the Idefics3 ``size={"longest_edge": L}`` resize.

    The longest side becomes L (up or down), the other int(L / aspect), made even by adding 1 when odd, at least 1;
    then, if a side exceeds IDEFICS3_MAX_LONGEST_EDGE, the longest is brought down to it (other side truncated).
    The float expressions are the ones transformers evaluates, so the sizes agree even where rounding is close.
    """
    aspect = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest_edge
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > IDEFICS3_MAX_LONGEST_EDGE:
        width = IDEFICS3_MAX_LONGEST_EDGE
        height = int(width / aspect)
    elif height > width and height > IDEFICS3_MAX_LONGEST_EDGE:
        height = IDEFICS3_MAX_LONGEST_EDGE
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


def _idefics3_encoder_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """Output (height, width) of transformers' ``resize_for_vision_encoder``: both sides up to multiples of tile.

    The longest side is ceiled to a multiple of tile, the other recomputed from the aspect ratio (truncated) and
    then ceiled too, so the result may stretch the image slightly.
    """
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def preprocess_idefics3(
    img: Image.Image | ImageSource,
    *,
    longest_edge: int,
    max_image_size: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    do_image_splitting: bool = True,
) -> tuple[np.ndarray, int, int]:
    """Idefics3 / SmolVLM vision input: float32 (N, 3, M, M) with M = max_image_size, and (rows, cols).

    Equal to transformers' ``Idefics3ImageProcessorPil`` / ``SmolVLMImageProcessorPil`` (5.x; the "slow"
    ``Idefics3ImageProcessor`` in 4.x) for one image. Every resize is Pillow LANCZOS on uint8 (transformers converts
    back to uint8 between steps, so the steps are chained rather than fused):

    1. the longest edge is resized to ``longest_edge`` (up or down; see ``_idefics3_resized_size``);
    2. splitting: the image is resized so both sides are multiples of M, and if it is then larger than M x M it is cut
       into rows x cols tiles of M x M, row-major, followed LAST by the global view: the step-2 image resized to
       M x M. If it is exactly M x M (only when ``longest_edge <= M``) that single image is returned with rows =
       cols = 0, no global view added;
    3. no splitting: the step-1 image is stretched to M x M; rows = cols = 0.

    Every returned image is M x M: transformers pads only to line up images of a batch (zeros, with a
    pixel_attention_mask), which for a single image is a no-op, so nothing here is padded. Then rescale by 1/255
    and normalize. Released SmolVLM / Idefics3 checkpoints use mean = std = 0.5 and longest_edge = 4 * M, with
    M = 364 (Idefics3), 384 or 512 (SmolVLM).
    """
    if longest_edge < 1 or max_image_size < 1:
        raise ValueError(f"longest_edge and max_image_size must be positive, got {longest_edge}, {max_image_size}")
    m, s = _mean_std(mean, std)
    PIL = _pil()
    lanczos = PIL.Image.Resampling.LANCZOS
    tile = max_image_size
    im = _as_rgb(img)
    height, width = _idefics3_resized_size(im.height, im.width, longest_edge)
    im = im.resize((width, height), resample=lanczos)
    if not do_image_splitting:
        return _normalize(np.asarray(im.resize((tile, tile), resample=lanczos))[None], m, s), 0, 0
    height, width = _idefics3_encoder_size(im.height, im.width, tile)
    im = im.resize((width, height), resample=lanczos)
    if height <= tile and width <= tile:
        return _normalize(np.asarray(im)[None], m, s), 0, 0
    rows, cols = height // tile, width // tile
    pixels = np.asarray(im)
    tiles = pixels.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, tile, tile, 3)
    global_view = np.asarray(im.resize((tile, tile), resample=lanczos))
    return _normalize(np.concatenate([tiles, global_view[None]]), m, s), rows, cols
