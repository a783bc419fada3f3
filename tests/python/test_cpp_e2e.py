"""(d) End to end: models exported by tools/tconst_torch, run through the C++
command-line program, must give the PyTorch logits.

The program is build/examples/tconst (override with the environment
variable TCONST_BIN); these tests are skipped when it does not exist.
Contract (SPEC section 7):
  tconst logits --model FILE --ids FILE --out FILE
appends V little-endian float32 logits per input token (streaming).
"""

import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from tconst_torch import ModelConfig, build_model, export_model, load_model_file  # noqa: E402

TCONST_BIN = os.environ.get("TCONST_BIN", os.path.join(ROOT, "build", "examples", "tconst"))
HAVE_BIN = os.path.isfile(TCONST_BIN) and os.access(TCONST_BIN, os.X_OK)
SKIP_MSG = (f"C++ program not found at {TCONST_BIN}: build it (cmake -B build && cmake --build build) "
            "or point TCONST_BIN at it")


def fresh_model(arch, seed, **kw):
    """A freshly initialised small model. The init is wider than the training
    default (std 0.3 instead of 0.02) so that logits have unit-order spread
    and a wiring difference shows far above float32 rounding."""
    args = dict(arch=arch, vocab_size=61, n_embd=32, n_head=4, n_block=2, block_inner_depth=4,
                history_window=6, generate_window=4, ffn_hidden=64)
    args.update(kw)
    model = build_model(ModelConfig(**args)).init_weights(seed=seed, std=0.3)
    # Non-trivial LayerNorm parameters and biases (the init makes them 1 and 0).
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@unittest.skipUnless(HAVE_BIN, SKIP_MSG)
class TestCppLogits(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def write_ids(self, ids, name="ids.txt"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(" ".join(str(i) for i in ids) + "\n")
        return path

    def cpp_logits(self, model_path, ids, vocab):
        out = os.path.join(self.dir, "logits.f32")
        if os.path.exists(out):
            os.remove(out)
        r = subprocess.run([TCONST_BIN, "logits", "--model", model_path, "--ids", self.write_ids(ids),
                            "--out", out], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, f"tconst logits failed: {r.stderr.strip()}")
        got = np.fromfile(out, dtype="<f4")
        self.assertEqual(got.size, len(ids) * vocab, "expected one row of V float32 per token")
        return got.reshape(len(ids), vocab)

    def torch_logits(self, model_path, ids):
        # Reference in float64 from exactly the weights stored in the file.
        model, _ = load_model_file(model_path, torch.float64)
        with torch.no_grad():
            return model(torch.tensor([ids]))[0].numpy()

    def check(self, arch, dtype="f32", length=41, seed=0, **kw):
        model = fresh_model(arch, seed, **kw)
        path = os.path.join(self.dir, f"{arch}.safetensors")
        export_model(model, path, dtype=dtype)
        g = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(0, model.cfg.vocab_size, (length,), generator=g).tolist()
        ref = self.torch_logits(path, ids)
        got = self.cpp_logits(path, ids, model.cfg.vocab_size)
        err = np.abs(got - ref).max(axis=1)
        tol = 1e-4 * (1.0 + np.abs(ref).max())
        bad = np.nonzero(err > tol)[0]
        self.assertEqual(bad.size, 0, f"{arch} {dtype}: rows {bad[:8].tolist()} differ by up to "
                         f"{err.max():.3g} (tolerance {tol:.3g})")

    def test_tconstformer(self):
        # Hh = 6 is not a multiple of W = 4; 41 tokens cross ten resyncs.
        self.check("tconstformer")

    def test_tconstformer_depth2_and_3(self):
        for depth in (2, 3):
            with self.subTest(D=depth):
                self.check("tconstformer", block_inner_depth=depth, seed=depth)

    def test_tlinformer(self):
        self.check("tlinformer", seed=5)

    def test_transformer(self):
        self.check("transformer", n_block=3, seed=7)

    def test_half_precision_files(self):
        for dtype in ("f16", "bf16"):
            with self.subTest(dtype=dtype):
                self.check("tconstformer", dtype=dtype, length=20, seed=11)

    def test_bundled_demo_models(self):
        """The trained byte-level models in models/ on a KJV excerpt: with
        W = Hh = 64, 300 bytes cross four resyncs with a compressed context."""
        with open(os.path.join(ROOT, "models", "kjv_val.txt"), "rb") as f:
            ids = list(f.read(300))
        for name in ("kjv-tconst.safetensors", "kjv-transformer.safetensors"):
            path = os.path.join(ROOT, "models", name)
            if not os.path.exists(path):
                continue
            with self.subTest(model=name):
                ref = self.torch_logits(path, ids)
                got = self.cpp_logits(path, ids, 256)
                tol = 1e-4 * (1.0 + np.abs(ref).max())
                self.assertLess(np.abs(got - ref).max(), tol, name)

    def test_greedy_generate(self):
        model = fresh_model("tconstformer", 13)
        path = os.path.join(self.dir, "g.safetensors")
        export_model(model, path)
        prompt = [3, 14, 15, 9, 26, 5]
        loaded, _ = load_model_file(path, torch.float64)
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                seq.append(int(loaded.forward_last(seq).argmax()))
        r = subprocess.run([TCONST_BIN, "generate", "--model", path, "--ids", self.write_ids(prompt),
                            "--max-new", "12", "--greedy", "--print-ids"], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr.strip())
        self.assertEqual([int(t) for t in r.stdout.split()], seq[len(prompt):])

    def test_bad_token_id_is_an_error(self):
        model = fresh_model("tconstformer", 17)
        path = os.path.join(self.dir, "e.safetensors")
        export_model(model, path)
        r = subprocess.run([TCONST_BIN, "logits", "--model", path, "--ids",
                            self.write_ids([1, 2, model.cfg.vocab_size]),
                            "--out", os.path.join(self.dir, "e.f32")], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertTrue(r.stderr.strip(), "expected an error message on standard error")


if __name__ == "__main__":
    unittest.main()
