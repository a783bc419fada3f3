"""Tests of the safetensors I/O, tools/export.py and
tools/convert_checkpoint.py (checkpoints in the authors' layout)."""

import os
import struct
import subprocess
import sys
import tempfile
import unittest

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)

from tconst_torch import (  # noqa: E402
    ModelConfig,
    SafetensorsError,
    build_model,
    export_model,
    load_model_file,
    read_safetensors,
    write_safetensors,
)
from tconst_torch.convert import ConversionError, convert, parse_simple_yaml  # noqa: E402

PYTHON = sys.executable

AUTHORS_YAML = """\
# model config in the authors' key names (note "windown")
vocab_size: 53
n_embd: 24
n_head: 3
n_transformer_block: 2
block_inner_depth: 4
history_windown_size: 8   # W_oh
generate_window_size: 4   # W_og
dropout: 0.0
"""


def small_model(arch="tconstformer", seed=0, **kw):
    args = dict(arch=arch, vocab_size=53, n_embd=24, n_head=3, n_block=2, block_inner_depth=4,
                history_window=8, generate_window=4, ffn_hidden=40)
    args.update(kw)
    model = build_model(ModelConfig(**args), seed=seed)
    # Non-trivial norms and biases, so that a dropped or swapped tensor shows.
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def authors_checkpoint(model, yaml_cfg):
    """The layout the authors' training code saves: torch.compile prefixes,
    RoPE buffers, an explicit tied head, all nested under model_state_dict
    next to optimizer state and the run config."""
    sd = {}
    for name, t in model.state_dict().items():
        sd["_orig_mod." + name] = t.clone()
    sd["_orig_mod.transformer.lm_head.weight"] = model.embedding.weight.detach().clone()
    dh = model.cfg.head_dim
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh))
    for b in range(model.cfg.n_block):
        for layer in ("compress_context_layer", "hidden_layers.0", "hidden_layers.1",
                      "restore_context_shape_layer"):
            sd[f"_orig_mod.transformer.transformer_layers.{b}.{layer}.rope.inv_freq"] = inv_freq.clone()
    return {
        "epoch": 3,
        "step": 1234,
        "model_state_dict": sd,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "config": {"model": parse_simple_yaml(yaml_cfg), "train": {"lr": 1e-3, "batch_size": 8}},
    }


class TestSafetensors(unittest.TestCase):
    def test_roundtrip_dtypes(self):
        tensors = {
            "a": torch.randn(3, 5),
            "b": torch.randn(7).to(torch.float16),
            "c": torch.randn(2, 2).to(torch.bfloat16),
            "d": torch.randn(4, 1, 2, dtype=torch.float64),
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "t.safetensors")
            write_safetensors(path, tensors, {"k": "v"})
            with open(path, "rb") as f:
                blob = f.read()
            (n,) = struct.unpack("<Q", blob[:8])
            self.assertEqual((8 + n) % 64, 0, "the data section must start on a 64-byte line")
            got, meta = read_safetensors(path)
        self.assertEqual(meta, {"k": "v"})
        for k, t in tensors.items():
            self.assertEqual(got[k].dtype, t.dtype)
            self.assertTrue(torch.equal(got[k], t), k)

    def test_rejects_bad_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "t.safetensors")
            write_safetensors(path, {"a": torch.ones(4)})
            with open(path, "rb") as f:
                good = f.read()
            bad = os.path.join(tmp, "bad.safetensors")
            for blob in (good[:5], good[:-1], struct.pack("<Q", 10**6) + good[8:],
                         good[:8] + b"[" + good[9:]):
                with open(bad, "wb") as f:
                    f.write(blob)
                with self.assertRaises(SafetensorsError):
                    read_safetensors(bad)


class TestExport(unittest.TestCase):
    def test_export_and_load(self):
        for arch in ("tconstformer", "tlinformer", "transformer"):
            with self.subTest(arch=arch):
                model = small_model(arch)
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "m.safetensors")
                    export_model(model, path, tokenizer="bytes")
                    tensors, meta = read_safetensors(path)
                    loaded, _ = load_model_file(path)
                self.assertEqual(set(tensors), set(model.state_dict()))
                self.assertNotIn("transformer.lm_head.weight", tensors)
                self.assertEqual(meta["tconst.format"], "1")
                self.assertEqual(meta["tconst.architecture"], arch)
                self.assertEqual(meta["tconst.tokenizer"], "bytes")
                self.assertEqual(meta["tconst.vocab_size"], "53")
                self.assertEqual(meta["tconst.n_block"], "2")
                self.assertEqual(meta["tconst.rope_base"], "10000")
                self.assertEqual(float(meta["tconst.norm_eps"]), 1e-5)
                if arch == "transformer":
                    self.assertNotIn("tconst.block_inner_depth", meta)
                else:
                    self.assertEqual(meta["tconst.block_inner_depth"], "4")
                    self.assertEqual(meta["tconst.history_window"], "8")
                    self.assertEqual(meta["tconst.generate_window"], "4")
                for k, v in model.state_dict().items():
                    self.assertTrue(torch.equal(loaded.state_dict()[k], v), k)

    def test_export_cli_half(self):
        model = small_model()
        with tempfile.TemporaryDirectory() as tmp:
            ck = os.path.join(tmp, "run.pt")
            torch.save({"config": model.cfg.to_dict(), "model": model.state_dict(), "tokenizer": "bytes",
                        "step": 1}, ck)
            for dtype, tdt in (("f16", torch.float16), ("bf16", torch.bfloat16)):
                out = os.path.join(tmp, f"m_{dtype}.safetensors")
                subprocess.run([PYTHON, os.path.join(TOOLS, "export.py"), "--checkpoint", ck, "--out", out,
                                "--dtype", dtype], check=True, capture_output=True)
                tensors, meta = read_safetensors(out)
                self.assertEqual(meta["tconst.tokenizer"], "bytes")
                for k, v in model.state_dict().items():
                    self.assertEqual(tensors[k].dtype, tdt)
                    self.assertTrue(torch.equal(tensors[k], v.to(tdt)), k)


class TestYaml(unittest.TestCase):
    def test_simple_yaml(self):
        text = ("model:\n  n_embd: 432   # width\n  name: 'tc # not a comment'\n  flag: true\n"
                "  eps: 1.0e-5\n  none:\ntrain:\n  lrs:\n    - 1\n    - 2\n  tags: [a, b]\n")
        got = parse_simple_yaml(text)
        self.assertEqual(got["model"], {"n_embd": 432, "name": "tc # not a comment", "flag": True,
                                        "eps": 1e-5, "none": None})
        self.assertEqual(got["train"], {"lrs": [1, 2], "tags": ["a", "b"]})
        self.assertEqual(parse_simple_yaml(AUTHORS_YAML)["history_windown_size"], 8)


class TestConvert(unittest.TestCase):
    """(c) An authors'-layout checkpoint converts into a file whose tensors
    equal the originals."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.model = small_model()
        self.ckpt = os.path.join(self.dir, "ckpt.pt")
        self.yaml = os.path.join(self.dir, "model.yaml")
        torch.save(authors_checkpoint(self.model, AUTHORS_YAML), self.ckpt)
        with open(self.yaml, "w") as f:
            f.write(AUTHORS_YAML)

    def tearDown(self):
        self.tmp.cleanup()

    def run_cli(self, *extra, expect_ok=True):
        out = os.path.join(self.dir, "out.safetensors")
        r = subprocess.run([PYTHON, os.path.join(TOOLS, "convert_checkpoint.py"), "--checkpoint", self.ckpt,
                            "--out", out, *extra], capture_output=True, text=True)
        if expect_ok:
            self.assertEqual(r.returncode, 0, r.stderr)
        return out, r

    def check_equal(self, path, model=None, arch="tconstformer", tokenizer=None):
        model = model or self.model
        tensors, meta = read_safetensors(path)
        want = model.state_dict()
        self.assertEqual(set(tensors), set(want))
        for k, v in want.items():
            self.assertTrue(torch.equal(tensors[k], v), k)
        self.assertEqual(meta["tconst.architecture"], arch)
        self.assertEqual(meta["tconst.history_window"], "8")
        self.assertEqual(meta["tconst.generate_window"], "4")
        self.assertEqual(meta["tconst.n_block"], "2")
        if tokenizer:
            self.assertEqual(meta["tconst.tokenizer"], tokenizer)
        return meta

    def test_cli_with_yaml(self):
        out, _ = self.run_cli("--config", self.yaml, "--tokenizer", "gpt2")
        self.check_equal(out, tokenizer="gpt2")
        loaded, _ = load_model_file(out)
        ids = torch.tensor([[1, 5, 9, 2, 40, 3, 3, 7, 11, 0, 52]])
        with torch.no_grad():
            self.assertTrue(torch.allclose(loaded(ids), self.model.eval()(ids), atol=1e-6))

    def test_cli_config_from_checkpoint(self):
        out, _ = self.run_cli()
        self.check_equal(out)

    def test_tlinformer_flag(self):
        out, _ = self.run_cli("--config", self.yaml, "--arch", "tlinformer")
        self.check_equal(out, arch="tlinformer")

    def test_wrong_arch_flag(self):
        _, r = self.run_cli("--config", self.yaml, "--arch", "transformer", expect_ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not match", r.stderr)

    def test_untied_head_is_kept(self):
        ck = authors_checkpoint(self.model, AUTHORS_YAML)
        head = torch.randn(53, 24)
        ck["model_state_dict"]["_orig_mod.transformer.lm_head.weight"] = head
        out = os.path.join(self.dir, "untied.safetensors")
        cfg = convert(ck, out, log=lambda m: None)
        self.assertFalse(cfg.tied)
        tensors, _ = read_safetensors(out)
        self.assertTrue(torch.equal(tensors["transformer.lm_head.weight"], head))
        loaded, _ = load_model_file(out)
        self.assertFalse(loaded.cfg.tied)

    def test_bare_state_dict_transformer(self):
        model = small_model("transformer", n_block=3)
        ck = os.path.join(self.dir, "bare.pt")
        torch.save(model.state_dict(), ck)
        out = os.path.join(self.dir, "bare.safetensors")
        convert(ck, out, config={"vocab_size": 53, "n_embd": 24, "n_head": 3, "n_transformer_block": 3})
        tensors, meta = read_safetensors(out)
        self.assertEqual(meta["tconst.architecture"], "transformer")
        for k, v in model.state_dict().items():
            self.assertTrue(torch.equal(tensors[k], v), k)

    def test_shape_mismatch_is_reported(self):
        bad_yaml = AUTHORS_YAML.replace("vocab_size: 53", "vocab_size: 50")
        path = os.path.join(self.dir, "bad.yaml")
        with open(path, "w") as f:
            f.write(bad_yaml)
        _, r = self.run_cli("--config", path, expect_ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("embedding.weight", r.stderr)

    def test_depth_mismatch_is_reported(self):
        with self.assertRaisesRegex(ConversionError, "block_inner_depth"):
            convert(self.ckpt, os.path.join(self.dir, "x.safetensors"),
                    config=parse_simple_yaml(AUTHORS_YAML.replace("block_inner_depth: 4", "block_inner_depth: 3")))

    def test_unexpected_tensor(self):
        ck = authors_checkpoint(self.model, AUTHORS_YAML)
        ck["model_state_dict"]["_orig_mod.transformer.causal_mask"] = torch.ones(4, 4)
        out = os.path.join(self.dir, "u.safetensors")
        with self.assertRaisesRegex(ConversionError, "causal_mask"):
            convert(ck, out)
        convert(ck, out, drop_unexpected=True, log=lambda m: None)
        self.check_equal(out)


if __name__ == "__main__":
    unittest.main()
