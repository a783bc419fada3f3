"""What the bindings' tests share: paths to the golden and bundled models, the tconst program
(TCONST_BIN, as CTest sets it) and running it."""

import os
import subprocess
import tempfile

import numpy as np

import tconst

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden")
GOLDEN_CASES = ("tconst_D4_W8_H8", "tlin_D4_W8_H8", "transformer_L4")
KJV_TCONST = os.path.join(ROOT, "models", "kjv-tconst.safetensors")
KJV_TRANSFORMER = os.path.join(ROOT, "models", "kjv-transformer.safetensors")
KJV_TEXT = os.path.join(ROOT, "models", "kjv_val.txt")
TCONST_BIN = os.environ.get("TCONST_BIN", os.path.join(ROOT, "build", "examples", "tconst"))


def Model(path, **kw):
    """tconst.Model on one thread unless told: the tests run beside each other under CTest, where
    OpenMP threads that wait for a busy core slow everything down."""
    kw.setdefault("threads", 1)
    return tconst.Model(path, **kw)


def golden_model(case):
    return os.path.join(GOLDEN, case, "model.safetensors")


def golden_ids(case, name="ids.txt"):
    with open(os.path.join(GOLDEN, case, name)) as f:
        return [int(t) for t in f.read().split()]


def kjv_ids(n, offset=0):
    with open(KJV_TEXT, "rb") as f:
        return list(f.read()[offset:offset + n])


def write_ids(directory, ids, name="ids.txt"):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(" ".join(str(i) for i in ids) + "\n")
    return path


def run_tconst(*args):
    """Runs the tconst program; returns its standard output, or raises with its error."""
    r = subprocess.run([TCONST_BIN, *args, "--threads", "1"], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"tconst {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def cli_logits(model_path, ids, vocab, precision="float"):
    """`tconst logits` over ids: [len(ids), vocab] float32."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        run_tconst("logits", "--model", model_path, "--ids", write_ids(d, ids), "--out", out,
                   "--precision", precision)
        got = np.fromfile(out, dtype="<f4")
    assert got.size == len(ids) * vocab, "tconst logits: expected one row of V float32 per token"
    return got.reshape(len(ids), vocab)


def cli_generate(model_path, ids, *flags):
    """`tconst generate --print-ids` after ids: the generated ids."""
    with tempfile.TemporaryDirectory() as d:
        out = run_tconst("generate", "--model", model_path, "--ids", write_ids(d, ids),
                         "--print-ids", "--quiet", *flags)
    return [int(t) for t in out.split()]


def rss_bytes():
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
