"""Images in: llmrt next to llama-cpp-python (libmtmd) on the same converted
files, in one run: the time to encode one image, and the first-token latency
of a short prompt holding one image.

    python bench/vision.py [--runs 3] [--threads 2] [--dir /tmp/vision_bench]
    python bench/vision.py --only smolvlm --runs 5
    python bench/vision.py --gemma-runs 1      # the Gemma tower takes long on 2 cores

Two shapes, random weights: transformers builds the checkpoint from a config
(random init; timing does not care about the values), `llmrt convert --type
f16` writes the text model and the mmproj (llama.cpp's `clip` layout), and
both engines read those two files. They are kept in --dir, so reruns skip
the writing.

- smolvlm: SmolVLM-256M. SigLIP tower of width 768, 12 layers, 12 heads, FFN
  3072, tiles of 512 in patches of 16 (1024 patches), pixel shuffle by 4 ->
  64 tokens a tile; images resized to a longest edge of 2048 and tiled, plus
  a global view. Text: SmolLM2-135M (576 wide, 30 layers, 9 / 3 heads, FFN
  1536, vocabulary 49280).
- gemma3: Gemma 3 4B's tower: width 1152, 27 layers, 16 heads, FFN 4304,
  896 pixels in patches of 14 (4096 patches), pooled to 256 tokens, projected
  to 2560. The text model is a small gemma3 of that width (4 layers, FFN 4096,
  a small vocabulary): the text side is not what is measured here.

Measured, medians of --runs, the engines alternating (the order swapped
every run):

- encode: one 640x480 image's tiles through tower and projector, the
  preprocessing left out. llmrt: Vision.encode_pixels on the preprocessed
  pixels; llama.cpp: mtmd_encode_chunk on every image chunk of a prompt
  tokenized beforehand (mtmd_tokenize preprocesses).
- first token: a chat-shaped prompt with a new image each run (no cache
  can help), from an empty KV cache to one greedy token, preprocessing
  included. llmrt: generate(max_new_tokens=1); llama.cpp: mtmd_tokenize,
  mtmd_helper_eval_chunks, argmax of the last logits.

The tower's GFLOP/s count its products: the patch embedding (3 p^2 D a
patch), per layer 4 D^2 + 2 D F a patch, attention 2 x 2 T^2 D an image (T
patches); flops = 2 x multiply-adds; the projector is left out (under 1%).
The machine's own figure beside them: OpenBLAS's float32 GEMM through numpy
on a matrix of the tower's FFN shape, the same threads.

The images differ in preprocessing between the engines (gemma 3: llama.cpp
letterboxes on black, llmrt stretches as transformers does; resize filters
differ), not in the work: each engine reports its image token count.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np
from bench_generate import cpu_model, numpy_gemm_gflops

import llmrt

IMAGE_W, IMAGE_H = 640, 480

SHAPES: dict[str, dict] = {
    "smolvlm": dict(
        title="SmolVLM-256M", kind="idefics3",
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, image_size=512, patch_size=16),
        scale_factor=4, longest_edge=2048,
        text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, vocab_size=49280,
                  max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                  tie_word_embeddings=True),
        prompt="<|im_start|>User:{image}Describe this picture.<end_of_utterance>\nAssistant:",
        marker="<image>", llama_marker="{image}"),
    "gemma3": dict(
        title="Gemma-3-4B tower", kind="gemma3",
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                    num_attention_heads=16, image_size=896, patch_size=14),
        mm_tokens=256,
        text=dict(hidden_size=2560, intermediate_size=4096, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                  max_position_embeddings=8192, sliding_window=1024, query_pre_attn_scalar=256,
                  rope_theta=1000000.0, rope_local_base_freq=10000.0, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0),
        prompt="<start_of_turn>user\n{image}Describe this picture.<end_of_turn>\n"
               "<start_of_turn>model\n",
        # llmrt writes the processor's "\n\n" on both sides of the image's
        # <start_of_image> ... <end_of_image>; llama.cpp adds only those two
        # tokens, so its prompt carries the "\n\n"s to give the same tokens
        marker="<start_of_image>", llama_marker="\n\n{image}\n\n"),
}

# a tokenizer corpus: words, digits and blank lines ("\n\n" must be one token
# of the SmolVLM vocabulary: llama.cpp's idefics3 layout looks it up)
CORPUS = ("Describe this picture. A photo of a red fox in the snow, near a river; "
          "the sky is blue and 12345 birds fly over it.\n\n\nAssistant: it shows a fox.\n") * 40
I3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
               "<image>", "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7)
                                             for c in range(1, 7)]
GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                  "<image_soft_token>"]


# ---- files -----------------------------------------------------------------------------------


def _bpe_tokenizer(d: str) -> int:
    """A byte-level BPE with SmolVLM's image tokens -> the <image> id."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=1000, special_tokens=I3_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if tk.token_to_id("\u010a\u010a") is None:  # byte-level "\n\n"
        raise RuntimeError("the BPE vocabulary has no single \\n\\n token")
    tk.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<end_of_utterance>"}, f)
    return tk.token_to_id("<image>")


def _spm_tokenizer(d: str) -> tuple[int, dict[str, int]]:
    """A SentencePiece BPE with Gemma 3's turn and image tokens -> (size, ids)."""
    import sentencepiece as spm
    corpus = os.path.join(d, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(CORPUS)
    prefix = os.path.join(d, "tok")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=400, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        minloglevel=2, user_defined_symbols=GEMMA_SPECIALS)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    os.replace(prefix + ".model", os.path.join(d, "tokenizer.model"))
    for p in (prefix + ".vocab", corpus):
        os.remove(p)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True}, f)
    return sp.get_piece_size(), {t: sp.piece_to_id(t) for t in GEMMA_SPECIALS}


def write_checkpoint(name: str, d: str) -> None:
    """A random Hugging Face checkpoint of the shape, saved as float16:
    released checkpoints are bfloat16, but llmrt convert reads safetensors
    through numpy, which has no bfloat16 type without ml_dtypes."""
    import torch
    import transformers
    s = SHAPES[name]
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    if s["kind"] == "idefics3":
        image_id = _bpe_tokenizer(d)
        cfg = transformers.Idefics3Config(
            text_config=s["text"], vision_config=s["vision"], scale_factor=s["scale_factor"],
            image_token_id=image_id, tie_word_embeddings=s["text"]["tie_word_embeddings"])
        model = transformers.Idefics3ForConditionalGeneration(cfg)
        pre = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
               "size": {"longest_edge": s["longest_edge"]},
               "max_image_size": {"longest_edge": s["vision"]["image_size"]}}
    else:
        n, ids = _spm_tokenizer(d)
        cfg = transformers.Gemma3Config(
            text_config={**s["text"], "vocab_size": n}, vision_config=s["vision"],
            mm_tokens_per_image=s["mm_tokens"], boi_token_index=ids["<start_of_image>"],
            eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"])
        model = transformers.Gemma3ForConditionalGeneration(cfg)
        size = s["vision"]["image_size"]
        pre = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
               "size": {"height": size, "width": size}}
    model.to(torch.float16).save_pretrained(d)
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f)


def ensure(name: str, root: str) -> tuple[str, str]:
    """The shape's text model and mmproj (f16), written once into root/name."""
    d = os.path.join(root, name)
    model, mmproj = os.path.join(d, "model.f16.gguf"), os.path.join(d, "mmproj-model.f16.gguf")
    if os.path.exists(model) and os.path.exists(mmproj):
        return model, mmproj
    from llmrt.convert import convert
    hf = os.path.join(d, "hf")
    t = time.perf_counter()
    shutil.rmtree(hf, ignore_errors=True)
    write_checkpoint(name, hf)
    convert(hf, model + ".part", "f16", progress=False, mmproj=mmproj + ".part")
    os.replace(mmproj + ".part", mmproj)
    os.replace(model + ".part", model)
    shutil.rmtree(hf)  # the GGUF files are what is kept
    print(f"wrote {d}: model {os.path.getsize(model) / 1e6:.0f} MB, mmproj "
          f"{os.path.getsize(mmproj) / 1e6:.0f} MB ({time.perf_counter() - t:.0f} s)",
          file=sys.stderr, flush=True)
    return model, mmproj


def photo(w: int, h: int, seed: int):
    """A deterministic photo-like RGB image: smooth light, a few soft blobs, grain."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([60 + 120 * x / w, 80 + 100 * y / h, 140 - 60 * (x + y) / (w + h)], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * w
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        img += blob * rng.uniform(-90, 90, 3)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


# ---- the engines -----------------------------------------------------------------------------


class LlmrtVision:
    name = "llmrt"

    def __init__(self, model: str, mmproj: str, threads: int):
        self.m = llmrt.Model(model, mmproj=mmproj, threads=threads, context_length=4096)
        self.v = self.m.vision

    def encode(self, img) -> tuple[float, int]:
        px, _ = self.v.pixels(img)
        t0 = time.perf_counter()
        rows = self.v.encode_pixels(px)
        return time.perf_counter() - t0, len(rows)

    def encode_one_tile(self, img) -> float:
        """One tile alone (idefics3 images are many tiles, encoded together)."""
        px, _ = self.v.pixels(img)
        t0 = time.perf_counter()
        self.v.encode_pixels(px[:1])
        return time.perf_counter() - t0

    def first_token(self, prompt: str, img) -> float:
        t0 = time.perf_counter()
        self.m.generate(prompt, images=[img], max_new_tokens=1, ignore_eos=True)
        return time.perf_counter() - t0

    def prompt_tokens(self, prompt: str, img) -> tuple[int, int]:
        """(prompt tokens, image tokens) of the prompt with this image."""
        n = len(self.m.prompt_ids(prompt, images=[img]))
        return n, len(self.v.embeddings(img).rows)  # the image's rows, from the cache


_QUIET = None  # the no-op log callback handed to libmtmd, kept alive


class LlamaCppVision:
    name = "llama.cpp"

    def __init__(self, model: str, mmproj: str, threads: int):
        global _QUIET
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd
        self.lc, self.mtmd = llama_cpp, mtmd
        if _QUIET is None:
            _QUIET = llama_cpp.llama_log_callback(lambda level, text, user: None)
            mtmd.mtmd_log_set(_QUIET, None)
            mtmd.mtmd_helper_log_set(_QUIET, None)
        self.llm = llama_cpp.Llama(model, n_ctx=4096, n_batch=512, n_ubatch=512,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        p = mtmd.mtmd_context_params_default()
        # warmup: llama.cpp encodes a dummy image at load, as its tools do
        p.use_gpu, p.n_threads, p.print_timings, p.warmup = False, threads, False, True
        self.ctx = mtmd.mtmd_init_from_file(mmproj.encode(), self.llm.model, p)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp's mtmd_init_from_file refused {mmproj}")
        self.n_vocab = self.llm.n_vocab()

    def close(self) -> None:
        self.mtmd.mtmd_free(self.ctx)
        self.llm.close()

    def _tokenize(self, text: str, img):
        """(chunks, bitmap) of a prompt with one image; the caller frees both."""
        mt = self.mtmd
        rgb = np.ascontiguousarray(np.asarray(img.convert("RGB"), np.uint8))
        bm = mt.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0],
                                 rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        raw = text.replace("{image}", mt.mtmd_default_marker().decode()).encode()
        it = mt.mtmd_input_text()
        it.text, it.text_len, it.add_special, it.parse_special = raw, len(raw), True, True
        chunks = mt.mtmd_input_chunks_init()
        rc = mt.mtmd_tokenize(self.ctx, chunks, ctypes.byref(it),
                              (mt.mtmd_bitmap_p_ctypes * 1)(bm), 1)
        if rc != 0:
            raise RuntimeError(f"mtmd_tokenize returned {rc}")
        return chunks, bm

    def _images(self, chunks) -> list:
        mt = self.mtmd
        out = []
        for i in range(mt.mtmd_input_chunks_size(chunks)):
            c = mt.mtmd_input_chunks_get(chunks, i)
            if mt.mtmd_input_chunk_get_type(c) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                out.append(c)
        return out

    def _free(self, chunks, bm) -> None:
        self.mtmd.mtmd_input_chunks_free(chunks)
        self.mtmd.mtmd_bitmap_free(bm)

    def encode(self, img) -> tuple[float, int]:
        mt = self.mtmd
        chunks, bm = self._tokenize("{image}", img)
        try:
            images = self._images(chunks)
            t0 = time.perf_counter()
            for c in images:
                if mt.mtmd_encode_chunk(self.ctx, c) != 0:
                    raise RuntimeError("mtmd_encode_chunk failed")
            dt = time.perf_counter() - t0
            return dt, sum(mt.mtmd_input_chunk_get_n_tokens(c) for c in images)
        finally:
            self._free(chunks, bm)

    def first_token(self, prompt: str, img) -> float:
        lc, mt = self.lc, self.mtmd
        t0 = time.perf_counter()
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        chunks, bm = self._tokenize(prompt, img)
        try:
            n_past = lc.llama_pos(0)
            rc = mt.mtmd_helper_eval_chunks(self.ctx, self.llm._ctx.ctx, chunks, 0, 0, 512, True,
                                            ctypes.byref(n_past))
            if rc != 0:
                raise RuntimeError(f"mtmd_helper_eval_chunks returned {rc}")
            logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), (self.n_vocab,))
            int(np.argmax(logits))
            dt = time.perf_counter() - t0
            self.n_past = n_past.value
            return dt
        finally:
            self._free(chunks, bm)

    def prompt_tokens(self, prompt: str, img) -> tuple[int, int]:
        """(prompt tokens, image tokens) of the prompt with this image."""
        self.first_token(prompt, img)
        chunks, bm = self._tokenize("{image}", img)
        try:
            n = sum(self.mtmd.mtmd_input_chunk_get_n_tokens(c) for c in self._images(chunks))
        finally:
            self._free(chunks, bm)
        return self.n_past, n


# ---- measuring -------------------------------------------------------------------------------


def tokens_per_tile(name: str) -> int:
    s = SHAPES[name]
    if s["kind"] == "gemma3":
        return s["mm_tokens"]
    G = s["vision"]["image_size"] // s["vision"]["patch_size"]
    return (G // s["scale_factor"]) ** 2


def tower_flops(name: str, n_tiles: int) -> float:
    v = SHAPES[name]["vision"]
    D, F, L = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    p = v["patch_size"]
    T = (v["image_size"] // p) ** 2
    macs = T * 3 * p * p * D + L * T * (4 * D * D + 2 * D * F)
    return n_tiles * (2 * macs + L * 2 * 2 * T * T * D)


def gemm_gflops(name: str, threads: int) -> float | None:
    """OpenBLAS float32 GEMM through numpy on the tower's FFN product (one
    tile's patches by the up projection)."""
    v = SHAPES[name]["vision"]
    T = (v["image_size"] // v["patch_size"]) ** 2
    return numpy_gemm_gflops(T, v["hidden_size"], v["intermediate_size"], threads)


def measure(name: str, a: argparse.Namespace, runs: int) -> dict:
    s = SHAPES[name]
    model, mmproj = ensure(name, a.dir)
    engines: list = [LlmrtVision(model, mmproj, a.threads)]
    try:
        engines.append(LlamaCppVision(model, mmproj, a.threads))
    except ImportError:
        print("llama-cpp-python (with mtmd_cpp) not installed: llmrt only", file=sys.stderr)
    prompts = {"llmrt": s["prompt"].format(image=s["marker"]),
               "llama.cpp": s["prompt"].format(image=s["llama_marker"])}
    setup = photo(IMAGE_W, IMAGE_H, 999)
    res: dict = {e.name: {"encode": [], "first": [], "one": [], "tokens": 0, "prompt": 0}
                 for e in engines}
    for e in engines:  # warm-up (one image through), and the token counts in each engine
        res[e.name]["prompt"], res[e.name]["tokens"] = e.prompt_tokens(prompts[e.name], setup)
    for r in range(runs):
        order = engines if r % 2 == 0 else engines[::-1]
        img = photo(IMAGE_W, IMAGE_H, r)
        for e in order:
            res[e.name]["encode"].append(e.encode(img)[0])
        if s["kind"] == "idefics3":
            res["llmrt"]["one"].append(engines[0].encode_one_tile(img))
        for e in order:  # an image no engine has seen: nothing cached
            res[e.name]["first"].append(e.first_token(prompts[e.name],
                                                      photo(IMAGE_W, IMAGE_H, 100 + r)))
        print(f"  {name} run {r + 1}/{runs}: " + "; ".join(
            f"{e.name} encode {res[e.name]['encode'][-1]:.2f} s, first token "
            f"{res[e.name]['first'][-1]:.2f} s" for e in engines), file=sys.stderr, flush=True)
    for e in engines:
        if hasattr(e, "close"):
            e.close()
    per_tile = tokens_per_tile(name)
    out = {"runs": runs, "gemm": gemm_gflops(name, a.threads)}
    for n, d in res.items():
        tiles = d["tokens"] // per_tile
        enc = statistics.median(d["encode"])
        out[n] = dict(encode=enc, first=statistics.median(d["first"]), tokens=d["tokens"],
                      tiles=tiles, prompt=d["prompt"], gflops=tower_flops(name, tiles) / enc / 1e9,
                      all_encode=d["encode"], all_first=d["first"],
                      one=statistics.median(d["one"]) if d["one"] else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "vision_bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gemma-runs", type=int, default=None,
                    help="runs for the Gemma tower (default: --runs)")
    ap.add_argument("--only", choices=sorted(SHAPES), default=None)
    a = ap.parse_args()
    names = [a.only] if a.only else list(SHAPES)
    results = {}
    for name in names:
        runs = a.gemma_runs if name == "gemma3" and a.gemma_runs else a.runs
        results[name] = measure(name, a, runs)
    try:
        import llama_cpp
        lc_version = llama_cpp.__version__
    except ImportError:
        lc_version = "-"
    print(f"\n{cpu_model()}, {llmrt.build_info()['cpu_isa']}, {a.threads} threads, llmrt "
          f"{llmrt.__version__}, llama-cpp-python {lc_version}; one {IMAGE_W}x{IMAGE_H} image, "
          "f16 mmproj and text model; medians (runs in the first column)")
    print("| shape (runs) | tiles x patches | image tokens llmrt / llama.cpp | tower GFLOP | "
          "encode llmrt | encode llama.cpp | llmrt speed-up | tower GFLOP/s llmrt / llama.cpp "
          "(f32 GEMM) | prompt tokens llmrt / llama.cpp | first token llmrt | first token "
          "llama.cpp | llmrt speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        s, lm, lc = SHAPES[name], r["llmrt"], r.get("llama.cpp")
        v = s["vision"]
        T = (v["image_size"] // v["patch_size"]) ** 2
        gemm = f" ({r['gemm']:.0f})" if r["gemm"] else ""
        if lc:
            print(f"| {s['title']} ({r['runs']}) | {lm['tiles']} x {T} | {lm['tokens']} / "
                  f"{lc['tokens']} | {tower_flops(name, lm['tiles']) / 1e9:.0f} | "
                  f"{lm['encode']:.2f} s | {lc['encode']:.2f} s | "
                  f"{lc['encode'] / lm['encode']:.2f}x | {lm['gflops']:.0f} / {lc['gflops']:.0f}"
                  f"{gemm} | {lm['prompt']} / {lc['prompt']} | {lm['first']:.2f} s | "
                  f"{lc['first']:.2f} s | {lc['first'] / lm['first']:.2f}x |")
        else:
            print(f"| {s['title']} ({r['runs']}) | {lm['tiles']} x {T} | {lm['tokens']} / - | "
                  f"{tower_flops(name, lm['tiles']) / 1e9:.0f} | {lm['encode']:.2f} s | - | - | "
                  f"{lm['gflops']:.0f} / -{gemm} | {lm['prompt']} / - | {lm['first']:.2f} s | "
                  "- | - |")
    tiled = [(n, r) for n, r in results.items() if r["llmrt"]["one"]]
    if tiled:
        print("\nA tile's share of the encode (ms): llmrt encodes an image's tiles in one call, "
              "llama.cpp one tile a call")
        print("| shape | llmrt, all tiles in one call | llmrt, one tile alone | llama.cpp |")
        print("|---|---|---|---|")
        for name, r in tiled:
            lm, lc = r["llmrt"], r.get("llama.cpp")
            print(f"| {SHAPES[name]['title']} | {1e3 * lm['encode'] / lm['tiles']:.0f} | "
                  f"{1e3 * lm['one']:.0f} | "
                  + (f"{1e3 * lc['encode'] / lc['tiles']:.0f} |" if lc else "- |"))
    for name, r in results.items():
        for n in ("llmrt", "llama.cpp"):
            if n in r:
                print(f"{name} {n}: encode runs {' '.join(f'{x:.2f}' for x in r[n]['all_encode'])}"
                      f" s; first token runs {' '.join(f'{x:.2f}' for x in r[n]['all_first'])} s")


if __name__ == "__main__":
    main()
