"""Minimal safetensors reader and writer (SPEC section 6), numpy + torch only.

Layout: an 8-byte little-endian unsigned header length N, then N bytes of
UTF-8 JSON, then the raw little-endian tensor data.  Each JSON entry maps a
tensor name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
relative to the first byte after the header; the optional "__metadata__"
entry maps strings to strings.

The writer pads the JSON with spaces so that the data section starts at a
multiple of 64 bytes (a cache line: tensors of whole 16-float rows then start
on one when the file is mapped) and packs tensors back to back without
holes, in sorted name order, which is what strict readers expect.  The
metadata comes first, its keys sorted, and the JSON is compact with non-ASCII
characters escaped: the canonical form that include/tconst/model/
safetensors_writer.hpp writes too, so both give the same bytes.
"""

import json
import struct

import numpy as np
import torch

# dtype name -> (numpy little-endian dtype used for the raw bytes, torch dtype)
# BF16 has no numpy type: its bytes travel as int16 and are reinterpreted.
_DTYPES = {
    "F64": ("<f8", torch.float64),
    "F32": ("<f4", torch.float32),
    "F16": ("<f2", torch.float16),
    "BF16": ("<i2", torch.bfloat16),
    "I64": ("<i8", torch.int64),
    "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16),
    "I8": ("i1", torch.int8),
    "U8": ("u1", torch.uint8),
    "BOOL": ("u1", torch.bool),
}
_TORCH_TO_NAME = {tdt: name for name, (_, tdt) in _DTYPES.items()}
# Header size cap: far above any real model's header, small enough that a
# corrupt length field cannot make us allocate gigabytes.
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """Raised for any malformed file; the message names the problem."""


def _dtype_size(name):
    return np.dtype(_DTYPES[name][0]).itemsize


def read_safetensors(path):
    """Return (tensors, metadata): dict name -> torch tensor, dict str -> str.

    Validates the header, offsets and sizes; raises SafetensorsError."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise SafetensorsError(f"{path}: file too short for a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise SafetensorsError(f"{path}: header length {n} exceeds the file size")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: malformed JSON header: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + n :]
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")

    tensors = {}
    ranges = []
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: malformed entry for tensor '{name}'") from None
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        if any(s < 0 for s in shape):
            raise SafetensorsError(f"{path}: tensor '{name}' has a negative dimension")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= begin <= end <= len(data)):
            raise SafetensorsError(f"{path}: tensor '{name}' data range is out of bounds")
        if end - begin != count * _dtype_size(dtype):
            raise SafetensorsError(
                f"{path}: tensor '{name}' byte size {end - begin} does not match "
                f"shape {shape} of {dtype}"
            )
        ranges.append((begin, end, name))
        np_dt, torch_dt = _DTYPES[dtype]
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(np_dt), count=count)
        # Copy into native byte order so torch owns writable memory.
        arr = arr.astype(np.dtype(np_dt).newbyteorder("="), copy=True).reshape(shape)
        t = torch.from_numpy(arr)
        if torch_dt in (torch.bfloat16, torch.bool):
            t = t.view(torch_dt) if torch_dt is torch.bfloat16 else t.to(torch.bool)
        tensors[name] = t
    ranges.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(ranges, ranges[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{path}: tensors '{n0}' and '{n1}' overlap")
    return tensors, dict(metadata)


def write_safetensors(path, tensors, metadata=None):
    """Write dict name -> torch tensor (any supported dtype) to `path`."""
    entries = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _TORCH_TO_NAME:
            raise SafetensorsError(f"tensor '{name}': unsupported dtype {t.dtype}")
        dname = _TORCH_TO_NAME[t.dtype]
        if t.dtype is torch.bfloat16:
            arr = t.view(torch.int16).numpy()
        elif t.dtype is torch.bool:
            arr = t.to(torch.uint8).numpy()
        else:
            arr = t.numpy()
        raw = arr.astype(np.dtype(_DTYPES[dname][0]), copy=False).tobytes()
        entries[name] = {
            "dtype": dname,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError("__metadata__ values must all be strings")
        entries = {"__metadata__": dict(sorted(metadata.items())), **entries}
    head = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(8 + len(head)) % 64)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in chunks:
            f.write(raw)
