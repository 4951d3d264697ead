"""Quantization to the GGUF block formats llmrt runs, and requantization of
GGUF files: ``llmrt quantize in.gguf out.gguf --type q4_k``.

Encoders for F16, BF16, Q8_0, Q4_0, Q4_1 and MXFP4 are gguf-py's; Q4_K and Q6_K are
written here from the block layouts (llmrt/csrc/core/dtype.h): per 256-weight
super-block, 6-bit (Q4_K) or 8-bit (Q6_K) sub-block scales relative to a
half-precision super-block scale, each sub-block's scale chosen from its
range, and the weights rounded with the scales as stored.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .arrays import dequantize_array
from .ggml_types import FILE_TYPES, writable
from .utils import progress_bar


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _q6_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols / 256 * 210) uint8."""
    rows, cols = x.shape
    b = x.reshape(-1, 256).astype(np.float32)               # super-blocks
    sub = b.reshape(-1, 16, 16)                             # 16 sub-blocks of 16
    amax = np.abs(sub).max(axis=2)                          # (nb, 16)
    # q - 32 in [-32, 31]: the sub-block's largest magnitude maps to about
    # 31; a few nearby scales are tried and the one with the least squared
    # error kept (clipping the largest values a little can pay)
    best_err: Any = None
    scale: Any = None
    for div in (31.0, 31.5, 32.0, 30.0, 29.0, 28.0):
        cand = amax / div
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(cand[:, :, None] > 0, np.clip(np.rint(sub / cand[:, :, None]), -32, 31), 0)
        err = ((q * cand[:, :, None] - sub) ** 2).sum(axis=2)
        if best_err is None:
            best_err, scale = err, cand
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            scale = np.where(better, cand, scale)
    d = scale.max(axis=1) / 127.0                           # super-block scale
    d16 = d.astype(np.float16)
    d = d16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0)
    sc = np.clip(sc, -128, 127).astype(np.int8)
    eff = d[:, None] * sc.astype(np.float32)                # (nb, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff[:, :, None] > 0, np.rint(sub / eff[:, :, None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [h][k][l]
    lo, hi = q & 0x0F, q >> 4
    ql = (lo[:, :, 0:2, :] | (lo[:, :, 2:4, :] << 4)).reshape(-1, 128)     # [h][k&1][l]
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6))
    out = np.concatenate([ql, qh.reshape(-1, 64), sc.view(np.uint8),
                          d16.view(np.uint8).reshape(-1, 2)], axis=1)
    return out.reshape(rows, -1)


def _q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols / 256 * 144) uint8."""
    rows, cols = x.shape
    sub = x.reshape(-1, 8, 32).astype(np.float32)           # 8 sub-blocks of 32
    lo_v = np.minimum(sub.min(axis=2), 0.0)                 # w = s q - m, q in [0, 15]
    mn = -lo_v                                              # m >= 0
    scale = (sub.max(axis=2) + mn) / 15.0
    # refit: with the weights' levels fixed, the least-squares scale and
    # offset of each sub-block (kept where they lower its error)
    with np.errstate(divide="ignore", invalid="ignore"):
        q0 = np.where(scale[:, :, None] > 0,
                      np.clip(np.rint((sub + mn[:, :, None]) / scale[:, :, None]), 0, 15), 0)
        qm, xm = q0.mean(axis=2), sub.mean(axis=2)
        var = ((q0 - qm[:, :, None]) ** 2).mean(axis=2)
        a = np.where(var > 0, ((q0 - qm[:, :, None]) * (sub - xm[:, :, None])).mean(axis=2) / var,
                     scale)
    b = a * qm - xm                                         # w = a q - b
    ok = (a > 0) & (b >= 0)
    e0 = ((q0 * scale[:, :, None] - mn[:, :, None] - sub) ** 2).sum(axis=2)
    e1 = ((q0 * a[:, :, None] - b[:, :, None] - sub) ** 2).sum(axis=2)
    use = ok & (e1 < e0)
    scale = np.where(use, a, scale)
    mn = np.where(use, b, mn)
    d = scale.max(axis=1) / 63.0
    dmin = mn.max(axis=1) / 63.0
    d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
    d, dmin = d16.astype(np.float32), dmin16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0)
        m = np.where(dmin[:, None] > 0, np.rint(mn / dmin[:, None]), 0)
    sc = np.clip(sc, 0, 63).astype(np.uint8)
    m = np.clip(m, 0, 63).astype(np.uint8)
    s_eff = d[:, None] * sc
    m_eff = dmin[:, None] * m
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s_eff[:, :, None] > 0,
                     np.rint((sub + m_eff[:, :, None]) / s_eff[:, :, None]), 0)
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(-1, 4, 2, 32)  # [pair][j & 1][l]
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)
    # 12 scale bytes: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales)
    # and 4-7 (mins); 4-7 in bytes 8-11 (low nibble scale, high nibble min)
    # with their top 2 bits in the top bits of bytes 0-3 / 4-7
    packed = np.empty((sc.shape[0], 12), np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    out = np.concatenate([d16.view(np.uint8).reshape(-1, 2), dmin16.view(np.uint8).reshape(-1, 2),
                          packed, qs], axis=1)
    return out.reshape(rows, -1)


def quantize_array(x: np.ndarray, type_name: str) -> np.ndarray:
    """A float matrix (rows, cols) in a GGUF type: float16 / float32 arrays
    for f16 / f32, else uint8 (rows, row bytes)."""
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize
    gt = writable(type_name)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    per = gt.block
    if x.shape[-1] % per:
        raise ValueError(f"{type_name}: rows of {x.shape[-1]} values are not whole "
                         f"{per}-value blocks")
    if type_name == "f32":
        return x
    if type_name == "f16":
        return _f16(x)
    if type_name == "q4_k":
        return _q4_k(x)
    if type_name == "q6_k":
        return _q6_k(x)
    return np.asarray(quantize(x, QT[gt.name]))


def tensor_type(name: str, shape: tuple[int, ...], target: str, tied: bool) -> str:
    """The type a tensor gets when a model is quantized to `target`: norms,
    biases, other vectors and mixture-of-experts routers (ffn_gate_inp: a
    small matrix whose rounding moves which experts are picked) stay
    float32; the output head (and a tied
    embedding, which is also the head) and the token embedding keep more
    precision than 4-bit targets (Q6_K under a K target, Q8_0 otherwise);
    rows that are not whole blocks of the type fall back to a type whose
    blocks fit (K types: Q4_1 for q4_k, Q8_0 for q6_k). Of a vision tower
    (mmproj), the patch kernel and positions stay float32 and gemma 3's
    projection f16; so do an encoder's position and token-type tables."""
    if len(shape) < 2 or name.endswith(("ffn_gate_inp.weight", ".bias")) or \
            name in ("v.patch_embd.weight", "v.position_embd.weight",  # a vision tower's input
                     "position_embd.weight", "token_types.weight"):  # an encoder's (small) tables
        return "f32"
    if name == "mm.input_projection.weight":  # gemma 3's projector: f16, as llama.cpp keeps it
        return "f32" if target == "f32" else "f16"
    cols = shape[-1]
    t = target
    if target == "mxfp4":  # as llama.cpp's MXFP4_MOE: the experts MXFP4, the rest Q8_0
        t = "mxfp4" if name.endswith("_exps.weight") else "q8_0"
    is_head = name == "output.weight" or (tied and name == "token_embd.weight")
    if name == "token_embd.weight" or is_head:
        if target in ("q4_0", "q4_1"):
            t = "q8_0"
        elif target == "q4_k":
            t = "q6_k"
    if cols % writable(t).block:
        t = {"q4_k": "q4_1", "q6_k": "q8_0"}.get(t, t)
        if cols % writable(t).block:
            t = "f16"
    return t


def copy_metadata(reader, writer, skip: Callable[[str], bool] = lambda k: False) -> None:
    """Every key of a GGUF reader into a writer (architecture and the
    GGUF.* bookkeeping excepted: the writer adds its own)."""
    from gguf import GGUFValueType
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or skip(name):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), vtype, sub_type=sub)


def write_tensors(w, entries, bar) -> None:
    """Writes a GGUF file's header and tensors: entries (name, numpy shape,
    type name, loader returning float32), infos first, then each tensor
    loaded, encoded and written in turn, so only one is in memory at a time.
    Closes the writer."""
    from gguf import GGMLQuantizationType as QT
    for name, shape, tt, _ in entries:
        gt = writable(tt)
        per, nb = gt.block, gt.nbytes
        nbytes = int(np.prod(shape)) // per * nb
        if tt in ("f32", "f16"):
            w.add_tensor_info(name, shape, np.dtype(np.float32 if tt == "f32" else np.float16),
                              nbytes)
        else:  # raw block bytes: the shape is given in bytes per row
            w.add_tensor_info(name, (*shape[:-1], shape[-1] // per * nb), np.dtype(np.uint8),
                              nbytes, raw_dtype=QT[gt.name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, tt, load in entries:
        x = load()
        if tt == "f32":
            data = x.astype(np.float32)
        elif tt == "f16":
            data = x.astype(np.float16)
        else:
            data = quantize_array(x.reshape(-1, shape[-1]), tt)
        w.write_tensor_data(np.ascontiguousarray(data.reshape(*shape[:-1], -1)))
        bar.set_postfix_str(name, refresh=False)
        bar.update(int(np.prod(shape)))
        del x, data
    bar.close()
    w.close()


# GGUF types whose data the requantizer reads (through gguf-py)
_READABLE = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K",
             "Q6_K", "Q2_K", "Q3_K", "MXFP4"}


def write_or_remove(path: str, write: Callable[[], None]) -> None:
    """Runs write; on any failure removes the partial file and re-raises."""
    try:
        write()
    except BaseException:
        try:
            os.remove(path)
        except OSError:
            pass
        raise


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike, type_name: str,
                  progress: bool | None = None) -> dict[str, str]:
    """Requantize a GGUF model: every matrix dequantized from its stored type
    and encoded in `type_name` (with the exceptions of tensor_type); returns
    the type chosen per tensor."""
    from gguf import GGUFReader, GGUFWriter

    from .errors import GGUFError, UnsupportedModelError
    writable(type_name)
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("the output file must differ from the input file")
    try:
        r = GGUFReader(src)
    except Exception as e:  # noqa: BLE001 - any parse failure of the input
        raise GGUFError(f"{src}: not a readable GGUF file ({e})") from None
    arch = r.fields["general.architecture"].contents()
    names = {t.name for t in r.tensors}
    tied = "output.weight" not in names
    w = GGUFWriter(dst, arch)
    copy_metadata(r, w, skip=lambda k: k == "general.file_type")
    w.add_file_type(FILE_TYPES[type_name])
    chosen, entries = {}, []
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))  # numpy order
        if t.tensor_type.name not in _READABLE:
            raise UnsupportedModelError(f"{src}: tensor {t.name!r} has type "
                                        f"{t.tensor_type.name}, which llmrt cannot read")
        chosen[t.name] = tensor_type(t.name, shape, type_name, tied)

        def load(t=t, shape=shape):
            try:
                return dequantize_array(t.data, t.tensor_type, shape)
            except Exception as e:  # noqa: BLE001 - malformed data in the input
                raise GGUFError(f"{src}: tensor {t.name!r}: {e}") from None
        entries.append((t.name, shape, chosen[t.name], load))
    write_or_remove(dst, lambda: write_tensors(
        w, entries, progress_bar(sum(int(t.n_elements) for t in r.tensors),
                                 f"quantize {type_name}", progress)))
    return chosen
