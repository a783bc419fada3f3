"""SPEC section 6.1's reference quantizer: float32 matrices to BF16 and Q8.

The same rules as include/tconst/model/quantize.hpp, in float32 numpy
arithmetic, so that both give the same bytes for the same float32 input:

* BF16: the upper 16 bits of the float32, rounded to nearest, ties to even;
  a NaN stays a quiet NaN.
* Q8 with block B: per row and block of B columns (the last may be partial),
  s = max|w| / 127 in float32; q = round(w / s) in float32, ties to even,
  clamped to [-127, 127]; a block whose s is 0 stores q = 0.
"""

import numpy as np
import torch

# The 2-D weights that a file may store as BF16 or Q8 (SPEC section 6.1).
_LAYER_MATRICES = (".qkv_proj.weight", ".out_proj.weight", ".ffn.w1.weight",
                   ".ffn.w3.weight", ".ffn.w2.weight")
Q8_BLOCKS = (16, 32, 64, 128, 256)
DEFAULT_Q8_BLOCK = 32


def is_quantizable_matrix(name):
    if name in ("embedding.weight", "transformer.lm_head.weight"):
        return True
    return name.startswith("transformer.transformer_layers.") and name.endswith(_LAYER_MATRICES)


def bf16_bits(w):
    """float32 array -> uint16 array of BF16 bits (ties to even, NaN kept)."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    nan = ((u & 0x7F800000) == 0x7F800000) & ((u & 0x7FFFFF) != 0)
    rounded = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def quantize_q8(w, block):
    """float32 [R, C] -> (int8 [R, C], float32 scales [R, ceil(C / block)])."""
    if block not in Q8_BLOCKS:
        raise ValueError(f"Q8 block size {block} is not a power of two from 16 to 256")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("cannot quantize a NaN or infinite weight to Q8")
    rows, cols = w.shape
    blocks = -(-cols // block)
    padded = np.zeros((rows, blocks * block), dtype=np.float32)
    padded[:, :cols] = w
    grouped = padded.reshape(rows, blocks, block)
    scales = (np.abs(grouped).max(axis=2) / np.float32(127)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))[:, :, None]
    q = np.rint(grouped / safe).astype(np.float32)
    q = np.where(scales[:, :, None] > 0, np.clip(q, -127, 127), 0)
    return q.reshape(rows, blocks * block)[:, :cols].astype(np.int8), scales


def quantize_tensors(tensors, weights, block=DEFAULT_Q8_BLOCK, keep=()):
    """dict name -> torch tensor, with every SPEC 6.1 matrix not in `keep`
    (widened to float32 first) in `weights` ('bf16' or 'q8'). Returns the new
    dict and the metadata it needs ({'tconst.q8_block': ...} for Q8)."""
    if weights not in ("bf16", "q8"):
        raise ValueError(f"unknown weight format '{weights}' (bf16 or q8)")
    out, meta = {}, {}
    for name, t in tensors.items():
        if not is_quantizable_matrix(name) or t.dim() != 2 or name in keep:
            out[name] = t
            continue
        w = t.detach().to("cpu", torch.float32).numpy()
        if weights == "bf16":
            out[name] = torch.from_numpy(bf16_bits(w).view(np.int16)).view(torch.bfloat16)
            continue
        try:
            q, s = quantize_q8(w, block)
        except ValueError as e:
            raise ValueError(f"tensor '{name}': {e}") from None
        out[name] = torch.from_numpy(q)
        out[name + ".q8_scale"] = torch.from_numpy(s)
        meta["tconst.q8_block"] = str(block)
    return out, meta


def dequantize_tensors(tensors, meta):
    """dict name -> tensor with every Q8 matrix (I8 and its scale tensor)
    replaced by its float32 values, W[r, c] = scale[r, c // B] * q[r, c]."""
    out = {}
    block = int(meta.get("tconst.q8_block", "0"))
    for name, t in tensors.items():
        if name.endswith(".q8_scale"):
            continue
        if t.dtype == torch.int8:
            s = tensors[name + ".q8_scale"].to(torch.float32)
            cols = t.shape[1]
            expanded = s.repeat_interleave(block, dim=1)[:, :cols]
            out[name] = expanded * t.to(torch.float32)
        else:
            out[name] = t
    return out
