"""Images in: a vision tower and its projector from an mmproj GGUF file
(llama.cpp's `clip` layout and keys), and how their embeddings enter a prompt.

An image becomes rows of decoder input embeddings: preprocessed as the
Hugging Face processor does (llmrt.images), its patches through the native
SigLIP tower (_core.VisionModel), pooled (gemma 3) or pixel-shuffled
(idefics3 / SmolVLM) and projected. In the prompt each row takes the place of
one image token; the token ids handed to the engine there are ids past the
vocabulary, a block of them per image (ImageTable), which key the prefix cache
by image (the same image, the same ids) and tell the engine which rows come as
embeddings. The embeddings are cached by the image's content hash, so a
conversation does not encode its images again.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .errors import GGUFError
from .families import PROJECTORS
from .mmproj import ID_BLOCK, MAX_LONGEST_EDGE, MMProj, load_mmproj

if TYPE_CHECKING:
    from .step import StepEntry
    from .tokenizer import Tokenizer

CACHED_IMAGES = 32       # images whose embeddings are kept after their requests end


# ---- the ids of images in a prompt ---------------------------------------------------------


class ImageEmbeds:
    """One image's decoder embeddings (rows, n_embd) and the ids that stand
    for them in prompts: first_id .. first_id + rows - 1."""

    __slots__ = ("key", "first_id", "rows", "grid", "__weakref__")

    def __init__(self, key: int, first_id: int, rows: np.ndarray, grid: tuple[int, int]):
        self.key, self.first_id, self.rows, self.grid = key, first_id, rows, grid


class PromptIds(list):
    """A prompt's token ids that hold images: the list keeps their
    embeddings alive as long as a request holds the prompt; `table` is the
    ImageTable its ids belong to."""

    images: tuple[ImageEmbeds, ...] = ()
    table: Any = None


class ImageTable:
    """Ids past the vocabulary, ID_BLOCK to an image, and the embeddings of
    the images alive (weakly held: a request's prompt and the cache hold
    them). The engine turns the ids of a step's entries into their rows."""

    def __init__(self, n_vocab: int, bidirectional: bool = False,
                 on_wrap: Any = None):
        self.n_vocab = n_vocab
        self.bidirectional = bidirectional  # an image's rows see each other (gemma 3)
        # called when keys start over: the prefix cache must forget blocks
        # keyed by the ids of images gone
        self.on_wrap = on_wrap
        self._live: weakref.WeakValueDictionary[int, ImageEmbeds] = \
            weakref.WeakValueDictionary()
        self._next = 0
        self._keys = ((1 << 31) - 1 - n_vocab) // ID_BLOCK
        self._lock = threading.Lock()

    def register(self, rows: np.ndarray, grid: tuple[int, int]) -> ImageEmbeds:
        if not 0 < len(rows) <= ID_BLOCK:
            raise ValueError(f"an image of {len(rows)} tokens (at most {ID_BLOCK})")
        with self._lock:
            for _ in range(self._keys):  # a key not in use (wraps after ~500K images)
                key, self._next = self._next, (self._next + 1) % self._keys
                if self._next == 0 and self.on_wrap is not None:
                    self.on_wrap()
                if key not in self._live:
                    break
            e = ImageEmbeds(key, self.n_vocab + key * ID_BLOCK, rows, grid)
            self._live[key] = e
            return e

    def active(self) -> bool:
        return len(self._live) > 0

    def owns(self, e: ImageEmbeds) -> bool:
        return self._live.get(e.key) is e

    def cut(self, toks: Sequence[int], start: int, c: int) -> int:
        """The length of a prompt chunk toks[start:start + c] moved so that it
        does not split an image whose rows see each other: cut before the
        image, or, where the chunk starts with it, extended to its end."""
        end, V = start + c, self.n_vocab
        if not self.bidirectional or end >= len(toks) or toks[end - 1] < V or toks[end] < V:
            return c
        s = end - 1
        while s > start and toks[s - 1] >= V:
            s -= 1
        if s > start:
            return s - start
        while end < len(toks) and toks[end] >= V:
            end += 1
        return end - start

    def attach(self, e: StepEntry) -> StepEntry:
        """The entry with the embeddings of its ids past the vocabulary."""
        toks = e.tokens
        if not len(toks) or int(toks.max()) < self.n_vocab:
            return e
        sel = toks[toks >= self.n_vocab].astype(np.int64) - self.n_vocab
        out = []
        for key in np.unique(sel // ID_BLOCK):
            img = self._live.get(int(key))
            if img is None:
                raise ValueError("a prompt refers to image embeddings no longer held")
        for i in sel:
            img = self._live[int(i // ID_BLOCK)]
            r = int(i % ID_BLOCK)
            if r >= len(img.rows):
                raise ValueError("an image id past its image's rows")
            out.append(img.rows[r])
        return e._replace(embeds=np.stack(out).astype(np.float32, copy=False))


# ---- the encoder ---------------------------------------------------------------------------


class Vision:
    """The model's images: encoding (cached by content hash) and prompts."""

    def __init__(self, mm: MMProj, tokenizer: Tokenizer, text_cfg: dict, arch: str,
                 options: dict[str, Any]):
        proj, name = mm.projector, os.path.basename(mm.path)
        if arch not in proj.text_archs or mm.config["proj_out"] != text_cfg["n_embd"]:
            raise ValueError(f"{name}: this mmproj ({proj.name}, {int(mm.config['proj_out'])} "
                             f"wide) does not fit the model ({arch}, {text_cfg['n_embd']} wide)")
        need = {proj.marker, proj.image_token} | ({"<end_of_image>"} if proj.pool else
                                                  {"<fake_token_around_image>", "<global-img>"})
        if proj.tiles:  # the row / column markers of the most tiles an image may give
            side = -(-min(mm.longest_edge, MAX_LONGEST_EDGE) // mm.image_size)
            need |= {f"<row_{r}_col_{c}>" for r in range(1, side + 1) for c in range(1, side + 1)}
        missing = [t for t in sorted(need) if tokenizer.special_token_id(t) is None]
        if missing:
            raise ValueError(f"{name}: the model's vocabulary lacks the image tokens {missing}")
        self.mm, self.projector, self.tokenizer = mm, proj, tokenizer
        self.image_token_id = tokenizer.special_token_id(proj.image_token)
        opts = _core.ModelOptions()
        for k, v in options.items():
            setattr(opts, k, v)
        self.native = _core.VisionModel(mm.config, mm.tensors, opts)
        self.table = ImageTable(text_cfg["n_vocab"], proj.bidirectional)
        self._cache: OrderedDict[str, ImageEmbeds] = OrderedDict()
        self._lock = threading.Lock()
        # one image encoded at a time (the tower runs one anyway): the same
        # image sent twice at once is encoded once, and gets the same ids
        self._encoding = threading.Lock()
        self.images_encoded = 0

    @property
    def tokens_per_tile(self) -> int:
        G = self.mm.image_size // self.mm.patch
        return (G // self.mm.merge) ** 2

    # ---- pixels -> embeddings ----
    def pixels(self, img: Any) -> tuple[np.ndarray, tuple[int, int]]:
        """The preprocessed tiles float32 (N, 3, S, S) and (rows, cols) of
        tiles ((0, 0): one view)."""
        from . import images as I
        mm = self.mm
        if self.projector.tiles:
            px, r, c = I.preprocess_idefics3(img, longest_edge=mm.longest_edge,
                                             max_image_size=mm.image_size, mean=mm.mean,
                                             std=mm.std)
            return px, (r, c)
        return I.preprocess_gemma3(img, size=mm.image_size, mean=mm.mean, std=mm.std)[None], \
            (0, 0)

    def encode_pixels(self, px: np.ndarray) -> np.ndarray:
        """Tiles float32 (N, 3, S, S) -> decoder embeddings (N * tokens, n_embd)."""
        mm = self.mm
        N, p, G, s = len(px), mm.patch, mm.image_size // mm.patch, mm.merge
        patches = px.reshape(N, 3, G, p, G, p).transpose(0, 2, 4, 1, 3, 5).reshape(
            N * G * G, 3 * p * p)
        x = self.native.encode(np.ascontiguousarray(patches, np.float32))
        D = x.shape[1]
        x = x.reshape(N, G // s, s, G // s, s, D)
        if self.projector.pool:  # s x s average pooling, rows in (y, x) order
            x = x.mean(axis=(2, 4), dtype=np.float32).reshape(-1, D)
        else:  # pixel shuffle: token (i, j) holds patch (i s + a, j s + b) at (a s + b) D
            x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, s * s * D)
        return self.native.project(np.ascontiguousarray(x, np.float32))

    def embeddings(self, img: Any) -> ImageEmbeds:
        """An image's embeddings, from the cache where the same image was seen."""
        if isinstance(img, ImageEmbeds) and self.table.owns(img):  # encoded already
            return img
        from . import images as I
        pil = I.load_image(img)
        h = I.image_hash(pil)
        with self._encoding:
            with self._lock:
                e = self._cache.get(h)
                if e is not None:
                    self._cache.move_to_end(h)
                    return e
            px, grid = self.pixels(pil)
            del pil
            e = self.table.register(self.encode_pixels(px), grid)
            with self._lock:
                self.images_encoded += 1
                self._cache[h] = e
                while len(self._cache) > CACHED_IMAGES:
                    self._cache.popitem(last=False)
            return e

    # ---- prompts ----
    def image_text(self, e: ImageEmbeds) -> str:
        """What the Hugging Face processor puts in the text for one image."""
        tok, n = self.projector.image_token, self.tokens_per_tile
        if self.projector.pool:
            return f"\n\n<start_of_image>{tok * len(e.rows)}<end_of_image>\n\n"
        rows, cols = e.grid
        wrap = "<fake_token_around_image>"
        glob = f"{wrap}<global-img>{tok * n}{wrap}"
        if rows == 0:
            return glob
        grid = "".join("".join(f"{wrap}<row_{r + 1}_col_{c + 1}>{tok * n}" for c in range(cols))
                       + "\n" for r in range(rows))
        return f"{grid}\n{glob}"

    def prompt(self, text: str, images: Sequence[Any], add_special: bool) -> PromptIds:
        """Token ids of a text whose image markers (the chat template's; none:
        the images go first) are replaced by the images' tokens."""
        marker = self.projector.marker
        found = text.count(marker)
        if found == 0:
            text = marker * len(images) + text
        elif found != len(images):
            raise ValueError(f"the prompt has {found} image markers ({marker}) for "
                             f"{len(images)} images")
        embeds = [self.embeddings(img) for img in images]
        pieces = text.split(marker)
        out = pieces[0] + "".join(self.image_text(e) + rest for e, rest in zip(embeds, pieces[1:]))
        ids = np.asarray(self.tokenizer.encode(out, add_special=add_special), np.int64)
        where = np.flatnonzero(ids == self.image_token_id)
        want = sum(len(e.rows) for e in embeds)
        if len(where) != want:
            raise ValueError(f"the prompt holds {len(where)} image tokens where its images "
                             f"need {want} (is {self.projector.image_token} in the text?)")
        ids[where] = np.concatenate([e.first_id + np.arange(len(e.rows)) for e in embeds])
        res = PromptIds(ids.tolist())
        res.images, res.table = tuple(embeds), self.table
        return res


# ---- finding the mmproj, images in chat messages ------------------------------------------


def find_mmproj(model_path: str) -> str | None:
    """The one file beside the model named as mmproj files are
    (``mmproj-*.gguf``, ``*-mmproj*.gguf``), or None."""
    d = os.path.dirname(os.path.abspath(model_path))
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return None
    found = [os.path.join(d, n) for n in names if n.lower().endswith(".gguf") and
             "mmproj" in n.lower() and os.path.join(d, n) != os.path.abspath(model_path)]
    return found[0] if len(found) == 1 else None


def vision_for(model_path: str, mmproj: Any, tokenizer: Tokenizer, g: Any,
               options: dict[str, Any]) -> Vision | None:
    """Model(path, mmproj=...)'s vision encoder: the file given; None or True:
    the one found beside the model (True: required), for a decoder family
    that takes images; False: none."""
    if mmproj is False:
        return None
    if mmproj is None or mmproj is True:
        takes = any(g.arch in p.text_archs for p in PROJECTORS.values())
        found = find_mmproj(model_path) if takes else None
        if found is None:
            if mmproj is True:
                raise FileNotFoundError(f"no mmproj file beside {model_path!r} for "
                                        f"a {g.arch} model")
            return None
        if mmproj is None:  # a file found, not asked for: one that does not fit is skipped
            try:
                return Vision(load_mmproj(found), tokenizer, g.config, g.arch, options)
            except (GGUFError, ValueError) as e:
                import warnings
                warnings.warn(f"the mmproj file beside the model was not loaded: {e}",
                              stacklevel=3)
                return None
        mmproj = found
    if not isinstance(mmproj, (str, os.PathLike)):
        raise ValueError(f"mmproj must be a path (or True / False), got {mmproj!r}")
    return Vision(load_mmproj(mmproj), tokenizer, g.config, g.arch, options)


IMAGE_PARTS = ("image", "image_url", "input_image")


def image_source(part: dict) -> Any:
    """What an image content part holds: {"type": "image", "image": ...}
    (or "url" / "path"), OpenAI's {"type": "image_url", "image_url": {"url":
    ...}} and the Responses API's {"type": "input_image", "image_url": ...}."""
    v = part.get("image", part.get("url", part.get("path"))) if part.get("type") == "image" \
        else part.get("image_url")
    if isinstance(v, dict):
        v = v.get("url")
    if v is None:
        raise ValueError(f"an {part.get('type')} content part without its image")
    return v


def split_images(messages: Any) -> tuple[Any, list[Any]]:
    """Messages whose content is a list of parts -> messages for the chat
    template (parts with images as {"type": "image"}; text-only parts joined
    into a string) and the images in order."""
    if not isinstance(messages, (list, tuple)):
        return messages, []
    images: list[Any] = []
    out = []
    for i, m in enumerate(messages):
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list):
            parts: list[dict[str, Any]] = []
            for p in c:
                kind = p.get("type") if isinstance(p, dict) else None
                if kind in ("text", "input_text") and isinstance(p.get("text"), str):
                    parts.append({"type": "text", "text": p["text"]})
                elif kind in IMAGE_PARTS:
                    images.append(image_source(p))
                    parts.append({"type": "image"})
                else:
                    raise ValueError(f"messages[{i}]: content parts are text or images, got "
                                     f"{p!r:.80}")
            has_image = any(p["type"] == "image" for p in parts)
            m = {**m, "content": parts if has_image else "".join(p["text"] for p in parts)}
        out.append(m)
    return out, images
