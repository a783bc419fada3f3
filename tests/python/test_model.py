"""Tests of our PyTorch model (tools/tconst_torch) against itself and against
the golden cases produced by the authors' implementation.

Run from the repository root:
  /usr/bin/python3 -m unittest discover -s tests/python -v
"""

import os
import sys
import unittest

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from tconst_torch import ModelConfig, build_model, load_model_file  # noqa: E402
from tconst_torch.model import apply_rope  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "data", "golden")


def small_config(arch, **kw):
    base = dict(arch=arch, vocab_size=37, n_embd=24, n_head=3, n_block=2, block_inner_depth=4,
                history_window=8, generate_window=4, ffn_hidden=40)
    base.update(kw)
    return ModelConfig(**base)


def randomise(model, seed):
    """Random weights with unit-scale logits, so that wiring mistakes show up
    well above rounding (the default 0.02 init makes outputs nearly flat)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith("embedding.weight") else 0.3
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


class TestRope(unittest.TestCase):
    def test_adjacent_pairs(self):
        # One head of dh = 4 at position 3: pair m rotates by 3 * base^(-2m/4).
        u = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
        out = apply_rope(u, 3, 10000.0)[0]
        for m, (a, b) in enumerate([(1.0, 2.0), (3.0, 4.0)]):
            ang = 3 * 10000.0 ** (-2 * m / 4)
            self.assertAlmostEqual(out[2 * m].item(), a * np.cos(ang) - b * np.sin(ang), places=12)
            self.assertAlmostEqual(out[2 * m + 1].item(), a * np.sin(ang) + b * np.cos(ang), places=12)


class TestChunkedForward(unittest.TestCase):
    """(a) Row p of the chunked training forward equals forward_last of the
    prefix of length p + 1, for every architecture and several windows."""

    def check(self, cfg, length, seed=0, batch=2):
        model = randomise(build_model(cfg).double(), seed).eval()
        g = torch.Generator().manual_seed(seed + 100)
        ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
        with torch.no_grad():
            full = model(ids)
            self.assertEqual(tuple(full.shape), (batch, length, cfg.vocab_size))
            for b in range(batch):
                for p in range(length):
                    ref = model.forward_last(ids[b, : p + 1])
                    err = (full[b, p] - ref).abs().max().item()
                    self.assertLess(err, 1e-9, f"{cfg.arch} W={cfg.generate_window} "
                                    f"Hh={cfg.history_window} D={cfg.block_inner_depth} row {p}: {err}")
        return full

    def test_tconstformer_windows(self):
        for w, hh, depth in [(4, 8, 4), (3, 5, 4), (8, 4, 3), (5, 5, 2), (1, 2, 4)]:
            with self.subTest(W=w, Hh=hh, D=depth):
                self.check(small_config("tconstformer", generate_window=w, history_window=hh,
                                        block_inner_depth=depth), length=23)

    def test_tlinformer_windows(self):
        for w, hh, depth in [(4, 8, 4), (3, 5, 3), (6, 4, 2)]:
            with self.subTest(W=w, Hh=hh, D=depth):
                self.check(small_config("tlinformer", generate_window=w, history_window=hh,
                                        block_inner_depth=depth), length=21)

    def test_transformer(self):
        self.check(small_config("transformer", n_block=3), length=19)

    def test_untied_head(self):
        self.check(small_config("tconstformer", tied=False), length=13)

    def test_context_changes_logits(self):
        """Sanity check that the context path is wired in at all: changing
        a token far back in the context (beyond the history window) must
        change the last logits of a TConstFormer through the compress layer."""
        cfg = small_config("tconstformer", generate_window=4, history_window=4)
        model = randomise(build_model(cfg).double(), 3).eval()
        ids = torch.arange(17) % cfg.vocab_size
        other = ids.clone()
        other[0] = (other[0] + 1) % cfg.vocab_size
        with torch.no_grad():
            diff = (model.forward_last(ids) - model.forward_last(other)).abs().max().item()
        self.assertGreater(diff, 1e-6)


class TestGolden(unittest.TestCase):
    """(b) Our model reproduces the authors' reference logits."""

    def run_case(self, name):
        folder = os.path.join(GOLDEN, name)
        if not os.path.isdir(folder):
            self.skipTest(f"golden case {name} not present")
        model, meta = load_model_file(os.path.join(folder, "model.safetensors"), torch.float32)
        with open(os.path.join(folder, "ids.txt")) as f:
            ids = [int(t) for t in f.read().split()]
        ref = np.fromfile(os.path.join(folder, "ref_logits.f32"), dtype="<f4")
        ref = ref.reshape(len(ids), -1)
        self.assertEqual(ref.shape[1], model.cfg.vocab_size)
        with torch.no_grad():
            full = model(torch.tensor([ids]))[0].numpy()
            last = np.stack([model.forward_last(ids[: p + 1]).numpy() for p in range(len(ids))])
        tol = 2e-4 * (1.0 + np.abs(ref).max())
        self.assertLess(np.abs(full - ref).max(), tol, f"{name}: chunked forward vs reference")
        self.assertLess(np.abs(last - ref).max(), tol, f"{name}: forward_last vs reference")

    def test_tconstformer(self):
        self.run_case("tconst_D4_W8_H8")

    def test_tlinformer(self):
        self.run_case("tlin_D4_W8_H8")

    def test_transformer(self):
        self.run_case("transformer_L4")

    def test_greedy(self):
        """Greedy continuation of prompt.txt equals ref_greedy.txt."""
        for name in ("tconst_D4_W8_H8", "tlin_D4_W8_H8", "transformer_L4"):
            folder = os.path.join(GOLDEN, name)
            if not os.path.exists(os.path.join(folder, "ref_greedy.txt")):
                continue
            with self.subTest(case=name):
                model, _ = load_model_file(os.path.join(folder, "model.safetensors"), torch.float64)
                with open(os.path.join(folder, "prompt.txt")) as f:
                    seq = [int(t) for t in f.read().split()]
                with open(os.path.join(folder, "ref_greedy.txt")) as f:
                    want = [int(t) for t in f.read().split()]
                got = []
                with torch.no_grad():
                    for _ in range(len(want)):
                        nxt = int(model.forward_last(seq).argmax())
                        got.append(nxt)
                        seq.append(nxt)
                self.assertEqual(got, want)


class TestDemoModel(unittest.TestCase):
    """The bundled byte-level KJV model loads and predicts KJV text well."""

    def test_kjv_tconst(self):
        path = os.path.join(ROOT, "models", "kjv-tconst.safetensors")
        if not os.path.exists(path):
            self.skipTest("models/kjv-tconst.safetensors not present")
        model, meta = load_model_file(path)
        self.assertEqual(meta["tconst.architecture"], "tconstformer")
        self.assertEqual(meta["tconst.tokenizer"], "bytes")
        with open(os.path.join(ROOT, "models", "kjv_val.txt"), "rb") as f:
            ids = torch.tensor([list(f.read(1025))])
        with torch.no_grad():
            logits = model(ids[:, :-1])[0]
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
        bpb = nll / np.log(2.0)
        # Trained to about 1.9 bits/byte on the validation text; an untrained
        # or mis-wired model is near 8.
        self.assertLess(bpb, 2.6)


if __name__ == "__main__":
    unittest.main()
