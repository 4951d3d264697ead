"""llmrt: run GGUF language models from Python with native CPU (AVX2 / AVX-512)
and CUDA kernels; `llmrt serve` puts them behind an OpenAI-compatible server.

    import llmrt
    model = llmrt.Model()                      # default: SmolLM2-135M-Instruct
    print(model.generate("Once upon a time", max_new_tokens=32).text)
"""

from . import (
    _core,
    tokenizer_encoder,  # noqa: F401  (registers the encoders' WordPiece / unigram)
)
from .encoder import EncoderModel
from .errors import GGUFError, KVCacheFullError, UnsupportedModelError
from .model import Model
from .outputs import BatchStream, Beam, GenerationResult, PerplexityResult, TextStream, TokenLogprob
from .sampling import SamplingParams
from .tokenizer import Tokenizer
from .utils import default_model_path, physical_cores

__version__ = _core.build_info()["version"]


def perplexity(model: "Model | str", text: str, window: int = 512,
               max_windows: int | None = None, progress: bool | None = None):
    """Perplexity of a text under a model (a Model or a GGUF path); see
    Model.perplexity."""
    m = model if isinstance(model, Model) else Model(model, context_length=max(window, 16))
    return m.perplexity(text, window=window, max_windows=max_windows, progress=progress)


def quantize(src: str, dst: str, type: str, progress: bool | None = None) -> dict:
    """Requantize a GGUF model file to `type` (f32, f16, bf16, q8_0, q4_0,
    q4_1, q4_k, q6_k); returns the type chosen per tensor."""
    from .quantization import quantize_file
    return quantize_file(src, dst, type, progress=progress)


def build_info() -> dict:
    """What this build contains: version, compiled CPU ISA variants, the one in
    use (LLMRT_ISA forces it), whether the CUDA backend is compiled in
    ("cuda") and the GPUs it sees ("cuda_devices")."""
    return dict(_core.build_info())


def cuda_available() -> bool:
    """Whether Model(device="cuda") can run: the CUDA backend is compiled in
    and the CUDA driver sees a GPU."""
    info = _core.build_info()
    return bool(info["cuda"]) and len(info["cuda_devices"]) > 0


__all__ = [
    "Model", "EncoderModel", "SamplingParams", "GenerationResult", "TokenLogprob", "Beam", "TextStream",
    "BatchStream", "PerplexityResult", "perplexity", "quantize", "Tokenizer", "GGUFError",
    "UnsupportedModelError", "KVCacheFullError", "default_model_path", "build_info",
    "cuda_available", "physical_cores", "__version__",
]
