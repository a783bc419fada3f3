"""SPEC section 6 model files: export a TConstModel, load one back.

A model file is a safetensors file whose tensor names are the model's
`state_dict()` keys (tied head: no `transformer.lm_head.weight`) and whose
`__metadata__` carries the hyperparameters as strings.
"""

import torch

from .model import ModelConfig, TConstModel
from .quantize import DEFAULT_Q8_BLOCK, dequantize_tensors, quantize_tensors
from .safetensors_io import read_safetensors, write_safetensors
from .tokenizer_files import tokenizer_metadata

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}
# How the weight matrices are stored (SPEC section 6.1): as `dtype`, or BF16 / Q8.
WEIGHT_FORMATS = ("f32", "bf16", "q8")


def _fmt_float(x):
    """Integers print without a decimal point (10000, not 10000.0); other
    values use repr, which round-trips exactly (1e-05)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def metadata_for(cfg: ModelConfig, tokenizer=None):
    meta = {
        "tconst.format": "1",
        "tconst.architecture": cfg.arch,
        "tconst.vocab_size": str(cfg.vocab_size),
        "tconst.n_embd": str(cfg.n_embd),
        "tconst.n_head": str(cfg.n_head),
        "tconst.n_block": str(cfg.n_block),
        "tconst.rope_base": _fmt_float(cfg.rope_base),
        "tconst.norm_eps": repr(float(cfg.norm_eps)),
    }
    if cfg.arch != "transformer":
        meta["tconst.block_inner_depth"] = str(cfg.block_inner_depth)
        meta["tconst.history_window"] = str(cfg.history_window)
        meta["tconst.generate_window"] = str(cfg.generate_window)
    if tokenizer:
        meta["tconst.tokenizer"] = tokenizer
    return meta


def write_model_file(path, cfg: ModelConfig, state_dict, dtype="f32", tokenizer=None,
                     tokenizer_files=None, weights="f32", q8_block=DEFAULT_Q8_BLOCK):
    """Write `state_dict` (SPEC names) with `cfg`'s metadata. Buffers such as
    `*.rope.inv_freq` are dropped; every tensor is cast to `dtype`. With
    `tokenizer_files` (a path, see tokenizer_files.py) the file carries that
    GPT-2 tokenizer (SPEC 6.2). With `weights` 'bf16' or 'q8', the weight
    matrices of SPEC section 6.1 are then stored in that format (from their
    float32 values, by the reference quantizer of quantize.py; Q8 with blocks
    of `q8_block`)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weights '{weights}' (choose from {', '.join(WEIGHT_FORMATS)})")
    out = {}
    for name, t in state_dict.items():
        if name.endswith("rope.inv_freq"):
            continue
        out[name] = t.detach().to("cpu", DTYPES[dtype]).contiguous()
    check_tensors(cfg, out)
    meta = metadata_for(cfg, tokenizer)
    if tokenizer_files:
        if tokenizer not in (None, "gpt2"):
            raise ValueError(f"a carried tokenizer is gpt2, but the tokenizer is '{tokenizer}'")
        meta.update(tokenizer_metadata(tokenizer_files))
    if weights != "f32":
        out, extra = quantize_tensors(out, weights, q8_block)
        meta.update(extra)
    write_safetensors(path, out, meta)


def export_model(model: TConstModel, path, dtype="f32", tokenizer=None, tokenizer_files=None,
                 weights="f32", q8_block=DEFAULT_Q8_BLOCK):
    write_model_file(path, model.cfg, model.state_dict(), dtype, tokenizer, tokenizer_files,
                     weights, q8_block)


def expected_shapes(cfg: ModelConfig):
    """name -> shape for every tensor a file of this config must hold."""
    d, f, v = cfg.n_embd, cfg.ffn_hidden, cfg.vocab_size
    shapes = {
        "embedding.weight": [v, d],
        "transformer.norm.weight": [d],
        "transformer.norm.bias": [d],
    }
    if not cfg.tied:
        shapes["transformer.lm_head.weight"] = [v, d]
    prefixes = []
    for b in range(cfg.n_block):
        p = f"transformer.transformer_layers.{b}"
        if cfg.arch == "transformer":
            prefixes.append(p)
        else:
            prefixes.append(f"{p}.compress_context_layer")
            prefixes += [f"{p}.hidden_layers.{j}" for j in range(cfg.block_inner_depth - 2)]
            prefixes.append(f"{p}.restore_context_shape_layer")
    for p in prefixes:
        for n in ("norm1", "norm2"):
            shapes[f"{p}.{n}.weight"] = [d]
            shapes[f"{p}.{n}.bias"] = [d]
        shapes[f"{p}.qkv_proj.weight"] = [3 * d, d]
        shapes[f"{p}.qkv_proj.bias"] = [3 * d]
        shapes[f"{p}.out_proj.weight"] = [d, d]
        shapes[f"{p}.out_proj.bias"] = [d]
        shapes[f"{p}.ffn.w1.weight"] = [f, d]
        shapes[f"{p}.ffn.w3.weight"] = [f, d]
        shapes[f"{p}.ffn.w2.weight"] = [d, f]
    return shapes


def check_tensors(cfg: ModelConfig, tensors):
    """Raise ValueError naming the first missing, unexpected or mis-shaped
    tensor."""
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in tensors:
            raise ValueError(f"missing tensor '{name}'")
        got = list(tensors[name].shape)
        if got != shape:
            raise ValueError(f"tensor '{name}' has shape {got}, expected {shape}")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise ValueError(f"unexpected tensor '{extra[0]}' ({len(extra)} unexpected in all)")


def config_from_metadata(meta, tensors):
    """Build a ModelConfig from `__metadata__`; f and tying come from tensors."""
    def geti(key, default=None):
        if key not in meta:
            if default is None:
                raise ValueError(f"metadata key '{key}' is missing")
            return default
        return int(meta[key])

    arch = meta.get("tconst.architecture")
    if arch is None:
        raise ValueError("metadata key 'tconst.architecture' is missing")
    if "embedding.weight" not in tensors:
        raise ValueError("missing tensor 'embedding.weight'")
    w1 = next((t for n, t in tensors.items() if n.endswith("ffn.w1.weight")), None)
    if w1 is None:
        raise ValueError("no ffn.w1.weight tensor to read the SwiGLU size from")
    tconst = arch != "transformer"
    return ModelConfig(
        arch=arch,
        vocab_size=geti("tconst.vocab_size"),
        n_embd=geti("tconst.n_embd"),
        n_head=geti("tconst.n_head"),
        n_block=geti("tconst.n_block"),
        block_inner_depth=geti("tconst.block_inner_depth") if tconst else 2,
        history_window=geti("tconst.history_window") if tconst else 1,
        generate_window=geti("tconst.generate_window") if tconst else 1,
        ffn_hidden=int(w1.shape[0]),
        rope_base=float(meta.get("tconst.rope_base", "10000")),
        norm_eps=float(meta.get("tconst.norm_eps", "1e-5")),
        tied="transformer.lm_head.weight" not in tensors,
    )


def load_model_file(path, dtype=torch.float32):
    """Read a SPEC section 6 file into a TConstModel of `dtype` (tensors are
    upcast from F16/BF16; Q8 matrices dequantized, SPEC section 6.1).
    Returns (model, metadata)."""
    tensors, meta = read_safetensors(path)
    tensors = {n: t for n, t in tensors.items() if not n.endswith("rope.inv_freq")}
    tensors = dequantize_tensors(tensors, meta)
    cfg = config_from_metadata(meta, tensors)
    check_tensors(cfg, tensors)
    model = TConstModel(cfg)
    model.load_state_dict({n: t.to(dtype) for n, t in tensors.items()}, strict=True)
    return model.to(dtype).eval(), meta
