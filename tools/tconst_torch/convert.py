"""Convert checkpoints saved by the authors' public training code into SPEC
section 6 model files.

What such a checkpoint may look like (all handled here):
- a bare state dict saved with torch.save, or a training checkpoint dict
  that nests it under `model_state_dict` (or `state_dict`, `model`,
  `module`), next to optimizer state and the whole run config under
  `config`;
- names prefixed by `_orig_mod.` (torch.compile) and/or `module.` (DDP);
- `*.rope.inv_freq` buffers (recomputed at load time, so dropped);
- an explicit `transformer.lm_head.weight` that is the tied embedding
  (dropped) or a genuinely separate head (kept);
- a YAML model config with the authors' keys: vocab_size, n_embd, n_head,
  n_transformer_block, block_inner_depth, history_windown_size (sic),
  generate_window_size.
"""

import re

import torch

from .export import check_tensors, expected_shapes, write_model_file
from .model import ModelConfig

STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "module", "net")
TIED_HEAD = "transformer.lm_head.weight"


class ConversionError(ValueError):
    pass


# ---------------------------------------------------------------------------
# YAML: use PyYAML when installed, else a parser for the simple subset model
# configs use (nested mappings by indentation, scalars, comments).


def _scalar(text):
    t = text.strip()
    if not t or t in ("~", "null", "Null", "NULL"):
        return None
    if (t[0] == t[-1]) and t[0] in "'\"" and len(t) >= 2:
        return t[1:-1]
    if t in ("true", "True", "TRUE", "yes", "on"):
        return True
    if t in ("false", "False", "FALSE", "no", "off"):
        return False
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [_scalar(x) for x in inner.split(",")] if inner else []
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def _strip_comment(line):
    """Remove a trailing `# comment` that is not inside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def parse_simple_yaml(text):
    """Parse `key: value` YAML with nesting by indentation and `- item`
    lists of scalars. Enough for model/run configs; not a general parser."""
    root = {}
    # Stack of open containers: (indent, container, owner, key), where
    # owner[key] is container; a `key:` with no value opens an empty dict
    # that becomes a list if its first entry is a `- item`.
    stack = [(-1, root, None, None)]
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        while len(stack) > 1 and indent <= stack[-1][0]:
            stack.pop()
        _, container, owner, key = stack[-1]
        if body.startswith("- ") or body == "-":
            if isinstance(container, dict) and not container and owner is not None:
                container = owner[key] = []
                stack[-1] = (stack[-1][0], container, owner, key)
            if not isinstance(container, list):
                raise ConversionError(f"YAML line {lineno}: list item without a key")
            container.append(_scalar(body[1:]))
            continue
        if ":" not in body:
            raise ConversionError(f"YAML line {lineno}: expected 'key: value', got {body!r}")
        if not isinstance(container, dict):
            raise ConversionError(f"YAML line {lineno}: mapping inside a list is not supported")
        k, _, value = body.partition(":")
        k = k.strip().strip("'\"")
        if value.strip():
            container[k] = _scalar(value)
        else:
            child = container[k] = {}
            stack.append((indent, child, container, k))
    return _empty_dicts_to_none(root)


def _empty_dicts_to_none(d):
    # `key:` with nothing nested under it means null in YAML.
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _empty_dicts_to_none(v) if v else None
        else:
            out[k] = v
    return out


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml  # PyYAML, if the system has it
    except ImportError:
        return parse_simple_yaml(text)
    return yaml.safe_load(text)


# ---------------------------------------------------------------------------
# Locating the state dict and the config inside a checkpoint.


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()
    )


def find_state_dict(obj):
    """Return the tensor dict inside a loaded checkpoint."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, dict):
        return obj.state_dict()  # a whole nn.Module was saved
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if key in obj:
                inner = obj[key]
                if hasattr(inner, "state_dict") and callable(inner.state_dict):
                    inner = inner.state_dict()
                if _is_state_dict(inner):
                    return inner
        # Tensors mixed with a few non-tensor entries (e.g. a version int).
        tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if any(".weight" in k for k in tensors):
            return tensors
    raise ConversionError(
        "no state dict found in the checkpoint (looked for a tensor dict at the top level "
        f"and under {', '.join(STATE_DICT_KEYS)})"
    )


def _as_mapping(obj):
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "__dict__"):  # argparse.Namespace, dataclasses, simple objects
        return vars(obj)
    return None


def find_model_config(obj, depth=0):
    """Depth-first search for the mapping that holds the model keys (the run
    config may nest them under e.g. `model:`)."""
    m = _as_mapping(obj)
    if m is None or depth > 6:
        return None
    if "n_embd" in m:
        return m
    for v in m.values():
        if isinstance(v, (dict,)) or (hasattr(v, "__dict__") and not torch.is_tensor(v)):
            found = find_model_config(v, depth + 1)
            if found is not None:
                return found
    return None


def clean_names(state):
    """Strip torch.compile / DDP prefixes and drop RoPE buffers."""
    out = {}
    for name, t in state.items():
        clean = name.replace("_orig_mod.", "")
        if clean.startswith("module."):
            clean = clean[len("module."):]
        if clean.endswith("rope.inv_freq"):
            continue
        if clean in out:
            raise ConversionError(f"two tensors map to the same name '{clean}'")
        out[clean] = t
    return out


def infer_arch(names, requested=None):
    tconst_layout = any(".compress_context_layer." in n or ".hidden_layers." in n for n in names)
    if requested is None:
        return "tconstformer" if tconst_layout else "transformer"
    if (requested == "transformer") == tconst_layout:
        layout = "TConstFormer/TLinFormer blocks" if tconst_layout else "plain transformer layers"
        raise ConversionError(f"--arch {requested} does not match the checkpoint, which has {layout}")
    return requested


def _get(cfg, *keys, required=True):
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    if required:
        raise ConversionError(f"config key '{keys[0]}' is missing")
    return None


def _count_blocks(names):
    idx = {int(m.group(1)) for n in names for m in [re.match(r"transformer\.transformer_layers\.(\d+)\.", n)] if m}
    return max(idx) + 1 if idx else 0


def _count_hidden(names):
    idx = {int(m.group(1)) for n in names for m in [re.search(r"\.hidden_layers\.(\d+)\.", n)] if m}
    return max(idx) + 1 if idx else 0


def check_counts(model_cfg, names, arch):
    """Compare the block count and inner depth of the config with the tensor
    names; returns the block count."""
    n_block = int(_get(model_cfg, "n_transformer_block", "n_block", "n_layer", "n_layers"))
    found = _count_blocks(names)
    if found != n_block:
        raise ConversionError(
            f"config says {n_block} blocks/layers (n_transformer_block) but the checkpoint has {found}"
        )
    if arch != "transformer":
        depth = int(_get(model_cfg, "block_inner_depth"))
        hidden = _count_hidden(names)
        if hidden != depth - 2:
            raise ConversionError(
                f"config says block_inner_depth {depth} but the checkpoint has {hidden} hidden "
                f"layers per block (expected block_inner_depth - 2 = {depth - 2})"
            )
    return n_block


def build_config(model_cfg, tensors, arch):
    """ModelConfig from the authors' config keys, checked against tensors."""
    names = list(tensors)
    if "embedding.weight" not in tensors:
        raise ConversionError("the checkpoint has no 'embedding.weight' tensor")
    w1 = next((t for n, t in tensors.items() if n.endswith("ffn.w1.weight")), None)
    if w1 is None:
        raise ConversionError("the checkpoint has no '*.ffn.w1.weight' tensor")
    tconst = arch != "transformer"
    n_block = check_counts(model_cfg, names, arch)
    kw = dict(
        arch=arch,
        vocab_size=int(_get(model_cfg, "vocab_size")),
        n_embd=int(_get(model_cfg, "n_embd")),
        n_head=int(_get(model_cfg, "n_head")),
        n_block=n_block,
        ffn_hidden=int(w1.shape[0]),
        tied=TIED_HEAD not in tensors,
    )
    if tconst:
        kw["block_inner_depth"] = int(_get(model_cfg, "block_inner_depth"))
        kw["history_window"] = int(_get(model_cfg, "history_windown_size", "history_window_size", "history_window"))
        kw["generate_window"] = int(_get(model_cfg, "generate_window_size", "generate_window"))
    base = _get(model_cfg, "rope_base", "rope_theta", required=False)
    if base is not None:
        kw["rope_base"] = float(base)
    eps = _get(model_cfg, "norm_eps", "layer_norm_eps", "layernorm_eps", required=False)
    if eps is not None:
        kw["norm_eps"] = float(eps)
    try:
        cfg = ModelConfig(**kw)
    except ValueError as e:
        raise ConversionError(f"invalid config: {e}") from None
    try:
        check_tensors(cfg, tensors)
    except ValueError as e:
        raise ConversionError(f"checkpoint does not match the config: {e}") from None
    return cfg


def default_tokenizer(vocab_size):
    if vocab_size == 256:
        return "bytes"
    if vocab_size == 50257:
        return "gpt2"
    return None


def convert(checkpoint, out, config=None, arch=None, dtype="f32", tokenizer=None, drop_unexpected=False, log=print,
            tokenizer_files=None, weights="f32", q8_block=32):
    """Convert `checkpoint` (path or loaded object) into the model file `out`.

    config: path of a YAML model config, a dict, or None to use the config
    stored in the checkpoint. Returns the ModelConfig written."""
    obj = checkpoint
    if isinstance(checkpoint, str):
        try:
            obj = torch.load(checkpoint, map_location="cpu")
        except Exception as e:  # torch.load raises many types for a non-checkpoint
            raise ConversionError(f"cannot read '{checkpoint}' with torch.load: {e}") from None
    state = clean_names(find_state_dict(obj))
    state = {n: t for n, t in state.items() if torch.is_tensor(t)}

    if isinstance(config, str):
        cfg_src = load_yaml(config)
        where = config
    elif config is not None:
        cfg_src, where = config, "the given config"
    else:
        cfg_src = obj.get("config") if isinstance(obj, dict) else None
        where = "the checkpoint's 'config'"
        if cfg_src is None:
            raise ConversionError("no config: pass --config FILE (the checkpoint stores none)")
    model_cfg = find_model_config(cfg_src)
    if model_cfg is None:
        raise ConversionError(f"no model config (a mapping with n_embd) found in {where}")

    # The tied head: an explicit copy equal to the embedding is redundant.
    if TIED_HEAD in state:
        head, emb = state[TIED_HEAD], state.get("embedding.weight")
        if emb is not None and head.shape == emb.shape and torch.equal(head, emb):
            del state[TIED_HEAD]
        else:
            log("keeping transformer.lm_head.weight: it differs from the embedding (untied head)")

    arch = infer_arch(state, arch)
    check_counts(model_cfg, state, arch)
    # Tensors the format does not know (e.g. other registered buffers) are
    # an error unless the caller accepts dropping them.
    known = set(expected_shapes(_loose_config(model_cfg, state, arch)))
    extra = sorted(set(state) - known)
    if extra and not drop_unexpected:
        raise ConversionError(
            f"unexpected tensor '{extra[0]}' ({len(extra)} in all); pass --drop-unexpected to drop them"
        )
    for n in extra:
        log(f"dropping unexpected tensor '{n}'")
        del state[n]
    cfg = build_config(model_cfg, state, arch)

    if tokenizer is None:
        tokenizer = default_tokenizer(cfg.vocab_size)
    write_model_file(out, cfg, state, dtype=dtype, tokenizer=tokenizer, tokenizer_files=tokenizer_files,
                     weights=weights, q8_block=q8_block)
    return cfg


def _loose_config(model_cfg, state, arch):
    """Config used only to list the expected tensor names; the shapes are
    checked afterwards by build_config."""
    w1 = next((t for n, t in state.items() if n.endswith("ffn.w1.weight")), None)
    if w1 is None:
        raise ConversionError("the checkpoint has no '*.ffn.w1.weight' tensor")
    tconst = arch != "transformer"
    try:
        return ModelConfig(
            arch=arch,
            vocab_size=int(_get(model_cfg, "vocab_size")),
            n_embd=int(_get(model_cfg, "n_embd")),
            n_head=int(_get(model_cfg, "n_head")),
            n_block=int(_get(model_cfg, "n_transformer_block", "n_block", "n_layer", "n_layers")),
            block_inner_depth=int(_get(model_cfg, "block_inner_depth")) if tconst else 2,
            history_window=1,
            generate_window=1,
            ffn_hidden=int(w1.shape[0]),
            tied=TIED_HEAD not in state,
        )
    except ValueError as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"invalid config: {e}") from None
