"""Exceptions raised by llmrt."""


class GGUFError(ValueError):
    """A GGUF file is corrupt, truncated, or describes something llmrt cannot run.

    The message names the file and the key or tensor at fault.
    """


class UnsupportedModelError(GGUFError):
    """The GGUF file is well formed but uses an architecture or type llmrt does not support."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted: missing or malformed files or
    tensors."""


from ._core import KVCacheFullError  # noqa: E402  (raised by the native KV cache)

KVCacheFullError.__doc__ = (
    "The KV cache has no room for a request: every block holds a live sequence. "
    "Raise kv_cache_tokens, lower max_new_tokens, or release sequences.")
