"""A tokenizer carried inside a model file (SPEC section 6.2).

`tokenizer_metadata(path)` reads GPT-2 tokenizer files the way the C++
`load_tokenizer` finds them (a directory with vocab.json + merges.txt,
encoder.json + vocab.bpe or tokenizer.json; or one such file) and returns the
`__metadata__` entries that carry them. `embed_tokenizer(src, dst, path)`
rewrites a model file with those entries, its tensor bytes copied unchanged.
"""

import json
import os
import struct

from .safetensors_io import SafetensorsError

VOCAB_KEY = "tconst.tokenizer.vocab"
MERGES_KEY = "tconst.tokenizer.merges"
JSON_KEY = "tconst.tokenizer.json"
_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def _read_text(path):
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def _pair(vocab_path, merges_path):
    text = _read_text(vocab_path)
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{vocab_path}: not valid JSON ({e})") from None
    return {"tconst.tokenizer": "gpt2", VOCAB_KEY: text, MERGES_KEY: _read_text(merges_path)}


def _tokenizer_json(path):
    text = _read_text(path)
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return {"tconst.tokenizer": "gpt2", JSON_KEY: text}


def tokenizer_metadata(path):
    """The SPEC 6.2 metadata entries for the tokenizer files at `path`."""
    if os.path.isdir(path):
        for vocab, merges in _PAIRS:
            v, m = os.path.join(path, vocab), os.path.join(path, merges)
            if os.path.isfile(v) and os.path.isfile(m):
                return _pair(v, m)
            if os.path.isfile(v) != os.path.isfile(m):
                raise ValueError(f"{path} has {vocab if os.path.isfile(v) else merges} "
                                 f"but not {merges if os.path.isfile(v) else vocab}")
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return _tokenizer_json(os.path.join(path, "tokenizer.json"))
        raise ValueError(f"{path} holds no tokenizer files: expected vocab.json + merges.txt, "
                         "encoder.json + vocab.bpe, or tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"tokenizer path '{path}' does not exist")
    name = os.path.basename(path)
    for vocab, merges in _PAIRS:
        if name == vocab:
            m = os.path.join(os.path.dirname(path), merges)
            if not os.path.isfile(m):
                raise ValueError(f"{path} needs its merges file '{m}' beside it")
            return _pair(path, m)
    return _tokenizer_json(path)


def embed_tokenizer(src, dst, path):
    """Write `src` to `dst` with the tokenizer at `path` in its metadata, replacing any
    tokenizer it carried; tensor bytes are copied unchanged. `dst` appears whole or not at
    all (written beside it, then renamed), so `dst` may be `src`."""
    with open(src, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{src}: truncated header length")
        (n,) = struct.unpack("<Q", raw)
        header_bytes = f.read(n)
        if len(header_bytes) != n:
            raise SafetensorsError(f"{src}: truncated header")
        header = json.loads(header_bytes)
        data = f.read()
    meta = {k: v for k, v in (header.pop("__metadata__", None) or {}).items()
            if k not in (VOCAB_KEY, MERGES_KEY, JSON_KEY)}
    meta.update(tokenizer_metadata(path))
    head = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(8 + len(head)) % 64)
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
