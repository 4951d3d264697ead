"""llmrt: run GGUF language models from Python with native CPU kernels.

    import llmrt
    model = llmrt.Model()                      # default: SmolLM2-135M-Instruct
    print(model.generate("Once upon a time", max_new_tokens=32).text)
"""

from . import _core
from .errors import GGUFError, KVCacheFullError, UnsupportedModelError
from .model import (BatchStream, Beam, GenerationResult, Model, TextStream, TokenLogprob, default_model_path,
                    physical_cores)
from .sampling import SamplingParams
from .tokenizer import Tokenizer

__version__ = _core.build_info()["version"]


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
    "Model", "SamplingParams", "GenerationResult", "TokenLogprob", "Beam", "TextStream", "BatchStream", "Tokenizer", "GGUFError", "UnsupportedModelError",
    "KVCacheFullError",
    "default_model_path", "build_info", "cuda_available", "physical_cores", "__version__",
]
