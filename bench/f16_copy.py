"""Write an F16 copy of a GGUF model (every 2-D tensor widened from its
quantized type to float16, everything else as it was): a larger, slower and
slightly more accurate model with the same vocabulary, the target for
draft-model speculative decoding with the original as the draft.

    python bench/f16_copy.py [SRC] DST
"""

from __future__ import annotations

import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def f16_copy(src: str, dst: str) -> None:
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type)
        a = a.reshape([int(x) for x in reversed(t.shape)])
        w.add_tensor(t.name, a.astype(np.float16 if a.ndim == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) == 2:
        import llmrt
        f16_copy(llmrt.default_model_path(), sys.argv[1])
    else:
        f16_copy(sys.argv[1], sys.argv[2])
