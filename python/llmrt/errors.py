"""Exceptions raised by llmrt."""


class GGUFError(ValueError):
    """A GGUF file is corrupt, truncated, or describes something llmrt cannot run.

    The message names the file and the key or tensor at fault.
    """


class UnsupportedModelError(GGUFError):
    """The GGUF file is well formed but uses an architecture or type llmrt does not support."""
