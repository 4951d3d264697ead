"""Command line: ``llmrt generate "prompt"``, ``llmrt chat``, ``llmrt info``,
``llmrt quantize``, ``llmrt perplexity``, ``llmrt convert``, ``llmrt serve``."""

from __future__ import annotations

import argparse
import sys


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="GGUF file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--ctx", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--mmproj", default=None,
                   help="the vision tower's GGUF file (default: an mmproj*.gguf beside the model)")
    p.add_argument("--image", action="append", default=[],
                   help="an image file for the prompt (repeatable; needs a vision model)")


def _sampling_args(p: argparse.ArgumentParser, default_max: int) -> None:
    s = p.add_argument_group("sampling (llama.cpp's defaults; --temperature 0 for greedy; "
                             "see llmrt.SamplingParams)")
    s.add_argument("--max-new-tokens", "-n", type=int, default=default_max)
    s.add_argument("--temperature", "--temp", type=float, default=0.8, help="0: greedy (default 0.8)")
    s.add_argument("--top-k", type=int, default=40, help="0: off (default 40)")
    s.add_argument("--top-p", type=float, default=0.95, help="1: off (default 0.95)")
    s.add_argument("--min-p", type=float, default=0.05, help="0: off (default 0.05)")
    s.add_argument("--typical-p", type=float, default=1.0)
    s.add_argument("--repetition-penalty", "--repeat-penalty", type=float, default=1.0)
    s.add_argument("--presence-penalty", type=float, default=0.0)
    s.add_argument("--frequency-penalty", type=float, default=0.0)
    s.add_argument("--penalty-last-n", "--repeat-last-n", type=int, default=64)
    s.add_argument("--mirostat", type=int, default=0, choices=(0, 1, 2), help="mirostat mode")
    s.add_argument("--mirostat-tau", type=float, default=5.0)
    s.add_argument("--mirostat-eta", type=float, default=0.1)
    s.add_argument("--logit-bias", action="append", default=[], metavar="TOKEN_ID=BIAS")
    s.add_argument("--min-new-tokens", type=int, default=0)
    s.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    s.add_argument("--ignore-eos", action="store_true")
    s.add_argument("--seed", type=int, default=None,
                   help="random seed (default: a new one each run, printed with --stats)")


def _sampling_kwargs(a: argparse.Namespace) -> dict:
    if a.seed is None:  # drawn here, so that --stats can print it
        import random
        a.seed = random.SystemRandom().randrange(2**32)
    bias = {}
    for item in a.logit_bias:
        tok, _, val = item.partition("=")
        try:
            bias[int(tok)] = float(val)
        except ValueError:
            raise SystemExit(f"llmrt: --logit-bias wants TOKEN_ID=BIAS, got {item!r}") from None
    return dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                top_p=a.top_p, min_p=a.min_p, typical_p=a.typical_p,
                repetition_penalty=a.repetition_penalty, presence_penalty=a.presence_penalty,
                frequency_penalty=a.frequency_penalty, penalty_last_n=a.penalty_last_n,
                mirostat_mode=a.mirostat, mirostat_tau=a.mirostat_tau,
                mirostat_eta=a.mirostat_eta, logit_bias=bias or None,
                min_new_tokens=a.min_new_tokens, stop=a.stop, ignore_eos=a.ignore_eos,
                seed=a.seed)


def _load(a: argparse.Namespace):
    from .model import Model
    return Model(a.model, threads=a.threads, context_length=a.ctx, mmproj=a.mmproj)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llmrt", description="Run GGUF language models.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("prompt")
    _model_args(g)
    _sampling_args(g, 64)
    g.add_argument("--stats", action="store_true", help="print timings to stderr")
    sd = g.add_argument_group("speculative decoding")
    sd.add_argument("--prompt-lookup", action="store_true",
                    help="draft from the prompt and text so far (no second model)")
    sd.add_argument("--draft-model", help="a smaller GGUF model with the same vocabulary")
    sd.add_argument("--num-draft-tokens", type=int, default=8)
    c = sub.add_parser("chat", help="chat with the model (one message, or interactive)")
    c.add_argument("message", nargs="?", help="one message; without it, read turns from stdin")
    c.add_argument("--system", help="system prompt")
    _model_args(c)
    _sampling_args(c, 256)
    i = sub.add_parser("info", help="build and model information")
    i.add_argument("--model", "-m")
    from .ggml_types import WRITABLE
    q = sub.add_parser("quantize", help="requantize a GGUF model")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--type", required=True, choices=sorted(WRITABLE))
    pp = sub.add_parser("perplexity", help="perplexity of a text file under a model")
    pp.add_argument("model")
    pp.add_argument("--file", "-f", required=True, help="UTF-8 text")
    pp.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    pp.add_argument("--max-windows", type=int, default=None)
    pp.add_argument("--threads", "-t", type=int, default=None)
    cv = sub.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF")
    cv.add_argument("hf_dir")
    cv.add_argument("--output", "-o", required=True)
    cv.add_argument("--type", default="f16", choices=sorted(WRITABLE))
    cv.add_argument("--mmproj", default=None,
                    help="where a multimodal checkpoint's vision half goes (default: "
                         "mmproj-OUTPUT beside the model)")
    cv.add_argument("--no-mmproj", action="store_true", help="convert the text model only")
    from .serve import add_arguments as serve_arguments
    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (llmrt[server])")
    serve_arguments(sv)
    a = ap.parse_args(argv)

    from .errors import GGUFError
    try:
        if a.cmd == "info":
            return _info(a)
        if a.cmd == "quantize":
            return _quantize(a)
        if a.cmd == "perplexity":
            return _perplexity(a)
        if a.cmd == "convert":
            return _convert(a)
        if a.cmd == "serve":
            from .serve import main as serve_main
            return serve_main(a)
        model = _load(a)
        if hasattr(model, "encoder"):  # an EncoderModel: embeds and reranks
            raise ValueError(f"{a.model} is an encoder ({model.arch}): it embeds and reranks "
                             f"(llmrt serve answers /v1/embeddings, /v1/rerank); it does not "
                             f"{a.cmd}")
        if a.cmd == "generate":
            return _generate(model, a)
        return _chat(model, a)
    except (GGUFError, FileNotFoundError, ValueError) as e:
        print(f"llmrt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _stream(pieces) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _generate(model, a) -> int:
    sys.stdout.write(a.prompt)
    sys.stdout.flush()
    draft = None
    if a.prompt_lookup and a.draft_model:
        raise ValueError("give --prompt-lookup or --draft-model, not both")
    if a.prompt_lookup:
        draft = "prompt_lookup"
    elif a.draft_model:
        from .model import Model
        draft = Model(a.draft_model, threads=a.threads,  # type: ignore[assignment]
                      context_length=model.context_length)
    kw = dict(draft=draft, num_draft_tokens=a.num_draft_tokens) if draft is not None else {}
    if a.image:
        kw["images"] = a.image
    it = model.generate(a.prompt, stream=True, **kw, **_sampling_kwargs(a))
    _stream(it)
    if a.stats:
        res = it.result
        t = res.timings
        print(f"[prompt {res.prompt_tokens} tok, {t['prompt_tokens_per_s']:.1f} tok/s; "
              f"decode {len(res.token_ids)} tok, {t['decode_tokens_per_s']:.1f} tok/s; "
              + (f"draft acceptance {t['draft_acceptance']:.2f}, "
                 f"{t['tokens_per_forward']:.2f} tokens per forward; " if draft else "")
              + f"seed {a.seed}; {model!r}]", file=sys.stderr)
    return 0


def _chat(model, a) -> int:
    messages = []
    if a.system:
        messages.append({"role": "system", "content": a.system})
    images = [{"type": "image", "image": path} for path in a.image]
    if a.message is not None:
        messages.append({"role": "user", "content": images + [{"type": "text", "text": a.message}]
                         if images else a.message})
        _stream(model.chat(messages, stream=True, **_sampling_kwargs(a)))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = []
        for piece in model.chat(messages, stream=True, **_sampling_kwargs(a)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def _info(a) -> int:
    from . import build_info
    for k, v in build_info().items():
        print(f"{k}: {v}")
    try:
        from .model import Model
        print(f"model: {Model(a.model)!r}")
    except FileNotFoundError as e:
        print(f"model: {e}")
    return 0


def _quantize(a) -> int:
    import os

    from .quantization import quantize_file
    chosen = quantize_file(a.input, a.output, a.type, progress=None)
    kinds: dict[str, int] = {}
    for t in chosen.values():
        kinds[t] = kinds.get(t, 0) + 1
    print(f"wrote {a.output} ({os.path.getsize(a.output) / 1e6:.1f} MB): "
          + ", ".join(f"{n} x {t}" for t, n in sorted(kinds.items())))
    return 0


def _perplexity(a) -> int:
    from .model import Model
    with open(a.file, encoding="utf-8") as f:
        text = f.read()
    m = Model(a.model, threads=a.threads, context_length=max(a.window, 16))
    r = m.perplexity(text, window=a.window, max_windows=a.max_windows)
    print(f"perplexity {r.perplexity:.4f} (mean NLL {r.nll:.4f} nats) over {r.tokens} tokens: "
          f"{r.windows} windows of {r.window}, second halves scored; {r.seconds:.1f} s")
    return 0


def _convert(a) -> int:
    import os

    from .convert import convert
    info = convert(a.hf_dir, a.output, a.type, progress=None,
                   mmproj=False if a.no_mmproj else a.mmproj)
    print(f"wrote {a.output} ({os.path.getsize(a.output) / 1e6:.1f} MB): {info['arch']}, "
          f"{info['tensors']} tensors, vocabulary {info['vocab']}")
    if "mmproj" in info:
        print(f"wrote {info['mmproj']} ({os.path.getsize(info['mmproj']) / 1e6:.1f} MB): "
              f"{info['vision']['projector']} vision tower, {info['vision']['tensors']} tensors")
    return 0
