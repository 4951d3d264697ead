"""Embeddings: llmrt next to llama-cpp-python's embedding mode on the same
converted GGUF files, and sentence-transformers (torch, CPU) on the Hugging
Face checkpoint they were converted from, in one run: texts a second over a
corpus, the latency of one short query, and how far the embeddings agree.

    python bench/embed.py [--runs 3] [--threads 2] [--n 256] [--dir /tmp/embed_bench]
    python bench/embed.py --only minilm --types f16 --runs 5
    python bench/embed.py --llama-batch 1024     # skip llama.cpp's settings sweep

Two shapes, random weights, BERT's vocabulary size (30522):

- minilm: all-MiniLM-L6-v2. 6 layers, width 384, 12 heads, FFN 1536, 512
  positions.
- bge-base: bge-base-en-v1.5. 12 layers, width 768, 12 heads, FFN 3072, 512
  positions.

transformers builds a BertModel from a config (random init, std 0.04, about
a released BERT's) and saves it as safetensors; a lowercasing WordPiece
vocabulary is trained with `tokenizers` on the docstrings of some forty
standard-library modules and filled up to 30522 with "[unused<i>]" entries
(vocab.txt, tokenizer.json, tokenizer_config.json); modules.json and
1_Pooling/config.json make it a sentence-transformers model with mean
pooling, which `llmrt convert` writes into the file's pooling_type.
`llmrt convert --type f16 / q8_0` writes the GGUF files both llmrt and
llama.cpp read. Everything is kept in --dir, so reruns skip the writing.

The corpus: --n texts (default 256) of 8 to 128 words each, uniform, cut
from the same docstrings at a fixed seed (the mean token count is printed).
Measured, medians of --runs, the engines alternating (the order reversed
every run):

- throughput: the whole corpus, tokenization included, each engine batched
  as it does best. llmrt: one `Model.embed(texts)` call. llama.cpp:
  `Llama(embedding=True, pooling_type=mean, n_ctx=n_batch=n_ubatch=B)`,
  `llm.embed(texts, normalize=True)`, which packs texts into batches of up
  to B tokens; a non-causal model needs n_ubatch >= the batch's tokens, and
  its attention spans the whole batch (masked), so larger B is not always
  faster: B (512 to 4096, with flash attention; 512 without) is swept on a
  quarter of the corpus before the runs and the fastest kept (--llama-batch
  and --llama-flash fix them). sentence-transformers: `encode(texts,
  batch_size=b)`, torch limited to --threads (it sorts the texts by length
  and pads each batch); b (1, 4, 8, 32) is swept likewise (--st-batch fixes
  it). It runs the float32 checkpoint, one column for both file types.
- latency: one query (15 tokens with [CLS] and [SEP]), median of 20 calls
  a run.
- agreement: the cosine between each engine's embedding of a text and
  sentence-transformers', the minimum over the corpus. Random BERTs place
  all texts close together (the mean cosine between different texts is
  printed, 0.95 to 0.98), so the cosine is also given centered: both
  embeddings less sentence-transformers' mean over the corpus.

llmrt's GFLOP/s count its products: per token and layer 4 D^2 + 2 D F
multiply-adds, attention 2 T^2 D a text and layer (T tokens, no padding);
flops = 2 x multiply-adds. The machine's own figure beside them: OpenBLAS's
float32 GEMM through numpy on (2048 x D) by (D x F), the same threads.
Each run also prints the cores other processes kept busy meanwhile (from
/proc): on a shared machine, throw away runs where that is not near 0.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import shutil
import statistics
import sys
import time
import warnings

import numpy as np
from bench_generate import cpu_model, numpy_gemm_gflops

import llmrt

VOCAB = 30522
SHAPES: dict[str, dict] = {
    "minilm": dict(title="all-MiniLM-L6-v2", L=6, D=384, H=12, F=1536, P=512),
    "bge-base": dict(title="bge-base-en-v1.5", L=12, D=768, H=12, F=3072, P=512),
}
TYPES = ("f16", "q8_0", "f32")
QUERY = "how do I read a large file line by line in python?"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# the text the vocabulary is trained on and the corpus is cut from
DOC_MODULES = ["argparse", "asyncio", "collections", "concurrent.futures", "csv", "datetime",
               "decimal", "email", "fractions", "functools", "http.client", "http.server",
               "inspect", "io", "itertools", "json", "logging", "mailbox", "multiprocessing",
               "os", "pathlib", "pickle", "random", "re", "shutil", "smtplib", "socket",
               "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile",
               "textwrap", "threading", "unittest", "urllib.request", "uuid",
               "xml.dom.minidom", "zipfile"]
# llama.cpp's settings tried: (n_batch = n_ubatch, flash attention); without
# flash attention its masked attention over the whole batch costs more the
# larger the batch (512 tokens without it: 1.3-2.3x slower than with it)
LLAMA_SWEEP = ((512, False), (512, True), (1024, True), (2048, True), (4096, True))
# sentence-transformers' batch sizes tried: on 2 cores larger batches run
# slower (bge-base: 7 texts/s at 1 to 4, 2.5 at 32, 1.4 at 64)
ST_SWEEP = (1, 4, 8, 32)


# ---- text ------------------------------------------------------------------------------------


def docstrings() -> list[str]:
    """The docstrings of DOC_MODULES, their public classes, functions and
    methods, once each, in a fixed order."""
    seen: set[str] = set()
    out: list[str] = []

    def add(o) -> None:
        d = inspect.getdoc(o) if o is not None else None
        if d and d not in seen:
            seen.add(d)
            out.append(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DOC_MODULES:
            m = importlib.import_module(name)
            add(m)
            for k in sorted(vars(m)):
                o = getattr(m, k)
                if k.startswith("_") or not (inspect.isclass(o) or inspect.isfunction(o)):
                    continue
                add(o)
                if inspect.isclass(o):
                    for kk in sorted(vars(o)):
                        if not kk.startswith("_"):
                            add(getattr(o, kk, None))
    return out


def corpus(n: int, seed: int = 0) -> list[str]:
    """n texts of 8 to 128 words, windows of the docstrings' words."""
    words = "\n".join(docstrings()).split()
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        k = int(rng.integers(8, 129))
        s = int(rng.integers(0, len(words) - k))
        texts.append(" ".join(words[s:s + k]))
    return texts


# ---- files -----------------------------------------------------------------------------------


def wordpiece_files(d: str) -> None:
    """A lowercasing WordPiece vocabulary of VOCAB entries: trained on the
    docstrings, the rest "[unused<i>]" as BERT's vocab.txt has them."""
    from tokenizers import BertWordPieceTokenizer
    tk = BertWordPieceTokenizer(lowercase=True)
    tk.train_from_iterator(docstrings(), vocab_size=VOCAB, min_frequency=2,
                           special_tokens=SPECIALS, show_progress=False)
    tokens = [t for t, _ in sorted(tk.get_vocab().items(), key=lambda kv: kv[1])]
    tokens += [f"[unused{i}]" for i in range(VOCAB - len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB:
        raise RuntimeError(f"the vocabulary has {len(vocab)} distinct tokens, not {VOCAB}")
    with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    BertWordPieceTokenizer(vocab, lowercase=True).save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer",
                   "model_max_length": 512, "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "unk_token": "[UNK]", "pad_token": "[PAD]", "mask_token": "[MASK]"}, f)


def write_checkpoint(name: str, d: str) -> None:
    """A random BertModel of the shape with a WordPiece tokenizer and a
    sentence-transformers mean-pooling config, float32 safetensors."""
    import torch
    import transformers
    s = SHAPES[name]
    os.makedirs(os.path.join(d, "1_Pooling"), exist_ok=True)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=s["D"], num_hidden_layers=s["L"],
        num_attention_heads=s["H"], intermediate_size=s["F"], max_position_embeddings=s["P"],
        type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, initializer_range=0.04)
    transformers.BertModel(cfg).eval().save_pretrained(d)
    wordpiece_files(d)
    with open(os.path.join(d, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "",
                    "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"}], f)
    with open(os.path.join(d, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": s["P"], "do_lower_case": False}, f)
    with open(os.path.join(d, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": s["D"], "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False}, f)


def ensure(name: str, root: str, types: list[str]) -> tuple[str, dict[str, str]]:
    """The shape's Hugging Face directory and its GGUF files, written once."""
    d = os.path.join(root, name)
    hf = os.path.join(d, "hf")
    if not os.path.exists(os.path.join(hf, "1_Pooling", "config.json")):
        t = time.perf_counter()
        shutil.rmtree(hf, ignore_errors=True)
        write_checkpoint(name, hf)
        print(f"wrote {hf} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    from llmrt.convert import convert
    files = {}
    for ty in types:
        path = os.path.join(d, f"model.{ty}.gguf")
        if not os.path.exists(path):
            convert(hf, path + ".part", ty, progress=False)
            os.replace(path + ".part", path)
            print(f"wrote {path}: {os.path.getsize(path) / 1e6:.0f} MB", file=sys.stderr,
                  flush=True)
        files[ty] = path
    return hf, files


# ---- the engines -----------------------------------------------------------------------------


class LlmrtEmbed:
    def __init__(self, path: str, threads: int):
        self.m = llmrt.Model(path, threads=threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.m.embed(texts)

    def query(self, q: str) -> np.ndarray:
        return self.m.embed(q)[0]

    def tokens(self, texts: list[str]) -> list[int]:
        return [len(self.m.tokenize(t)) for t in texts]


class LlamaCppEmbed:
    def __init__(self, path: str, threads: int, batch: int, flash: bool):
        import llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=path, embedding=True, n_ctx=batch, n_batch=batch, n_ubatch=batch,
            n_threads=threads, n_threads_batch=threads, flash_attn=flash,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.llm.embed(texts, normalize=True), np.float32)

    def query(self, q: str) -> np.ndarray:
        return np.asarray(self.llm.embed(q, normalize=True), np.float32)

    def tokens(self, texts: list[str]) -> list[int]:
        return [len(self.llm.tokenize(t.encode())) for t in texts]

    def close(self) -> None:
        self.llm.close()


class STEmbed:
    def __init__(self, hf: str, threads: int, batch: int = 32):
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(threads)
        self.m = SentenceTransformer(hf, device="cpu")
        self.batch = batch

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.m.encode(texts, batch_size=self.batch, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def query(self, q: str) -> np.ndarray:
        return self.embed([q])[0]

    def tokens(self, texts: list[str]) -> list[int]:
        tk = self.m.tokenizer
        return [len(tk(t)["input_ids"]) for t in texts]


def cpu_jiffies() -> tuple[int, int]:
    """(the machine's busy jiffies, this process's), from /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            u = f.read().rsplit(")", 1)[1].split()
        return sum(v) - v[3] - v[4], int(u[11]) + int(u[12])
    except (OSError, ValueError, IndexError):
        return 0, 0


def others_load(start: tuple[int, int], seconds: float) -> float:
    """Cores other processes kept busy since start, on average."""
    end = cpu_jiffies()
    hz = os.sysconf("SC_CLK_TCK")
    return max(0, (end[0] - start[0]) - (end[1] - start[1])) / hz / max(seconds, 1e-9)


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t0, r


def tune_llama(path: str, texts: list[str], threads: int) -> tuple[int, bool, dict]:
    """The fastest LLAMA_SWEEP setting (n_batch, flash attention) of llama.cpp
    on texts, each timed once after a warm-up."""
    times = {}
    for b, flash in LLAMA_SWEEP:
        e = LlamaCppEmbed(path, threads, b, flash)
        e.embed(texts[:8])
        times[(b, flash)] = timed(e.embed, texts)[0]
        e.close()
    best = min(times, key=times.get)  # type: ignore[arg-type]
    return best[0], best[1], times


def tune_st(hf: str, texts: list[str], threads: int) -> tuple[int, dict]:
    """The fastest ST_SWEEP batch_size of sentence-transformers on texts."""
    e = STEmbed(hf, threads)
    times = {}
    for b in ST_SWEEP:
        e.batch = b
        e.embed(texts[:8])
        times[b] = timed(e.embed, texts)[0]
    return min(times, key=times.get), times  # type: ignore[arg-type]


# ---- measuring -------------------------------------------------------------------------------


def flops(name: str, lens: list[int]) -> float:
    s = SHAPES[name]
    D, F, L = s["D"], s["F"], s["L"]
    macs = sum(L * (T * (4 * D * D + 2 * D * F) + 2 * T * T * D) for T in lens)
    return 2.0 * macs


def gemm_gflops(name: str, threads: int) -> float | None:
    """OpenBLAS float32 GEMM through numpy, (2048 x D) by (D x F)."""
    s = SHAPES[name]
    return numpy_gemm_gflops(2048, s["D"], s["F"], threads)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def measure(name: str, a: argparse.Namespace, texts: list[str]) -> dict:
    hf, files = ensure(name, a.dir, a.types)
    engines: dict[str, object] = {}
    for ty, path in files.items():
        engines[f"llmrt {ty}"] = LlmrtEmbed(path, a.threads)
    settings: dict = {}
    try:
        import llama_cpp  # noqa: F401
        for ty, path in files.items():
            if a.llama_batch:
                settings[ty] = (a.llama_batch, a.llama_flash == "on", {})
            else:
                settings[ty] = tune_llama(path, texts[:max(16, len(texts) // 4)], a.threads)
                print(f"  {name} {ty} llama.cpp sweep (s): " + ", ".join(
                    f"{b}{' fa' if fl else ''} {t:.2f}" for (b, fl), t in
                    settings[ty][2].items()), file=sys.stderr, flush=True)
            engines[f"llama.cpp {ty}"] = LlamaCppEmbed(path, a.threads, *settings[ty][:2])
    except ImportError:
        print("llama-cpp-python not installed: no llama.cpp column", file=sys.stderr)
    try:
        if a.st_batch:
            st_batch = a.st_batch
        else:
            st_batch, st_times = tune_st(hf, texts[:max(16, len(texts) // 4)], a.threads)
            print(f"  {name} sentence-transformers sweep (s): " + ", ".join(
                f"{b} {t:.2f}" for b, t in st_times.items()), file=sys.stderr, flush=True)
        settings["st"] = st_batch
        engines["sentence-transformers"] = STEmbed(hf, a.threads, st_batch)
    except ImportError:
        print("sentence-transformers not installed: no torch column", file=sys.stderr)
    res: dict[str, dict] = {n: {"tput": [], "lat": []} for n in engines}
    for n, e in engines.items():  # warm-up, the token counts
        e.query(QUERY)  # type: ignore[attr-defined]
        e.embed(texts[:8])  # type: ignore[attr-defined]
        res[n]["lens"] = e.tokens(texts)  # type: ignore[attr-defined]
        res[n]["qlen"] = e.tokens([QUERY])[0]  # type: ignore[attr-defined]
    names = list(engines)
    loads = []
    for r in range(a.runs):
        t0, j0 = time.perf_counter(), cpu_jiffies()
        for n in (names if r % 2 == 0 else names[::-1]):
            e = engines[n]
            dt, emb = timed(e.embed, texts)  # type: ignore[attr-defined]
            res[n]["tput"].append(len(texts) / dt)
            res[n].setdefault("emb", emb)  # the first run's embeddings are compared
            e.query(QUERY)  # type: ignore[attr-defined]
            res[n]["lat"].append(statistics.median(
                timed(e.query, QUERY)[0] for _ in range(20)))  # type: ignore[attr-defined]
        loads.append(others_load(j0, time.perf_counter() - t0))
        print(f"  {name} run {r + 1}/{a.runs}: " + "; ".join(
            f"{n} {res[n]['tput'][-1]:.1f}/s {1e3 * res[n]['lat'][-1]:.1f} ms" for n in names)
            + f"; other processes {loads[-1]:.2f} cores", file=sys.stderr, flush=True)
    for e in engines.values():
        if hasattr(e, "close"):
            e.close()
    ref = res.get("sentence-transformers")
    out: dict = {"gemm": gemm_gflops(name, a.threads), "settings": settings, "engines": {},
                 "loads": loads}
    for n, d in res.items():
        lens = d["lens"]
        cos = cosines(d["emb"], ref["emb"]) if ref is not None else None
        mu = ref["emb"].mean(axis=0) if ref is not None else None
        ccos = cosines(d["emb"] - mu, ref["emb"] - mu) if ref is not None else None
        out["engines"][n] = dict(
            tput=statistics.median(d["tput"]), lat=statistics.median(d["lat"]),
            all_tput=d["tput"], tokens=float(np.mean(lens)), qlen=d["qlen"],
            same_tokens=ref is None or lens == ref["lens"],
            cos=float(cos.min()) if cos is not None else None,
            ccos=float(ccos.min()) if ccos is not None else None,
            gflops=flops(name, lens) * statistics.median(d["tput"]) / len(texts) / 1e9)
    if ref is not None:
        e = ref["emb"] / np.linalg.norm(ref["emb"], axis=1, keepdims=True)
        c = e @ e.T
        out["spread"] = float((c.sum() - np.trace(c)) / (len(e) * (len(e) - 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "embed_bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=256, help="texts in the corpus")
    ap.add_argument("--types", nargs="+", choices=TYPES, default=["f16", "q8_0"])
    ap.add_argument("--only", choices=sorted(SHAPES), default=None)
    ap.add_argument("--llama-batch", type=int, default=0,
                    help="llama.cpp's n_batch = n_ubatch = n_ctx (default: the fastest of a sweep)")
    ap.add_argument("--llama-flash", choices=("on", "off"), default="on",
                    help="llama.cpp's flash attention with --llama-batch")
    ap.add_argument("--st-batch", type=int, default=0,
                    help="sentence-transformers' batch_size (default: the fastest of a sweep)")
    a = ap.parse_args()
    texts = corpus(a.n)
    names = [a.only] if a.only else list(SHAPES)
    results = {name: measure(name, a, texts) for name in names}
    try:
        import llama_cpp
        lc_version = llama_cpp.__version__
    except ImportError:
        lc_version = "-"
    print(f"\n{cpu_model()}, {llmrt.build_info()['cpu_isa']}, {a.threads} threads, llmrt "
          f"{llmrt.__version__}, llama-cpp-python {lc_version}; {len(texts)} texts of 8-128 "
          f"words; medians of {a.runs} runs; texts/s over the corpus, ms for one query")
    print("| shape | type | tokens a text (query) | llmrt texts/s | llama.cpp texts/s | "
          "llmrt / llama.cpp | sentence-transformers texts/s | llmrt / s-t | query ms llmrt / "
          "llama.cpp / s-t | min cosine to s-t (centered) llmrt / llama.cpp | llmrt GFLOP/s (f32 "
          "GEMM) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        E = r["engines"]
        st = E.get("sentence-transformers")
        for ty in a.types:
            lm, lc = E[f"llmrt {ty}"], E.get(f"llama.cpp {ty}")

            def f(x, fmt):
                return format(x, fmt) if x is not None else "-"
            gemm = f" ({r['gemm']:.0f})" if r["gemm"] else ""
            print(f"| {SHAPES[name]['title']} | {ty} | {lm['tokens']:.1f} ({lm['qlen']}) | "
                  f"{lm['tput']:.1f} | {f(lc and lc['tput'], '.1f')} | "
                  f"{f(lc and lm['tput'] / lc['tput'], '.2f')}x | {f(st and st['tput'], '.1f')} | "
                  f"{f(st and lm['tput'] / st['tput'], '.2f')}x | {1e3 * lm['lat']:.1f} / "
                  f"{f(lc and 1e3 * lc['lat'], '.1f')} / {f(st and 1e3 * st['lat'], '.1f')} | "
                  f"{f(lm['cos'], '.5f')} ({f(lm['ccos'], '.4f')}) / {f(lc and lc['cos'], '.5f')} "
                  f"({f(lc and lc['ccos'], '.4f')}) | "
                  f"{lm['gflops']:.0f}{gemm} |")
    for name, r in results.items():
        for ty, v in r["settings"].items():
            if ty == "st":
                print(f"{name}: sentence-transformers batch_size {v}")
            else:
                print(f"{name} {ty}: llama.cpp n_batch = n_ubatch = {v[0]}, flash attention "
                      f"{'on' if v[1] else 'off'}")
        print(f"{name}: other processes' load during the runs (cores): "
              + " ".join(f"{x:.2f}" for x in r["loads"]))
        if "spread" in r:
            print(f"{name}: mean cosine between different texts (sentence-transformers) "
                  f"{r['spread']:.4f}; centered = less the corpus' mean embedding")
        for n, e in r["engines"].items():
            if not e["same_tokens"]:
                print(f"{name} {n}: token counts differ from sentence-transformers' on some texts")
            print(f"{name} {n}: texts/s runs {' '.join(f'{x:.1f}' for x in e['all_tput'])}")


if __name__ == "__main__":
    main()
