"""SPEC section 6.1 across the two implementations: files written by the
Python exporter in BF16 and Q8 read by the C++ `tconst`, and `tconst
quantize` giving byte for byte the file the exporter writes for the same
float32 weights (both use the reference quantizer, in float32 arithmetic,
and the same canonical safetensors layout).

Skipped when the C++ program (build/examples/tconst, or TCONST_BIN) is absent.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tconst_torch import export_model, load_model_file  # noqa: E402
from tconst_torch.quantize import bf16_bits, quantize_q8  # noqa: E402
from tconst_torch.safetensors_io import read_safetensors  # noqa: E402
from test_cpp_e2e import HAVE_BIN, SKIP_MSG, TCONST_BIN, fresh_model  # noqa: E402


class TestReferenceQuantizer(unittest.TestCase):
    def test_bf16_rounds_like_torch(self):
        g = torch.Generator().manual_seed(3)
        w = torch.randn(4096, generator=g) * 10.0 ** torch.randint(-30, 30, (4096,), generator=g)
        ties = np.array([0x3F808000, 0x3F818000, 0xBF808000], dtype=np.uint32).view(np.float32)
        x = np.concatenate([w.numpy().astype(np.float32), ties])
        want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(bf16_bits(x), want)
        nan = bf16_bits(np.array([np.nan], dtype=np.float32))
        self.assertTrue(np.isnan((nan.astype(np.uint32) << 16).view(np.float32))[0])

    def test_q8_error_within_half_a_step(self):
        g = torch.Generator().manual_seed(4)
        w = torch.randn(5, 70, generator=g).numpy()
        w[1, 32:64] = 0.0  # an all-zero block
        q, s = quantize_q8(w, 32)
        self.assertEqual(q.dtype, np.int8)
        self.assertEqual(s.shape, (5, 3))
        self.assertEqual(s[1, 1], 0.0)
        deq = np.repeat(s, 32, axis=1)[:, :70] * q.astype(np.float32)
        step = np.repeat(s, 32, axis=1)[:, :70]
        self.assertTrue(np.all(np.abs(deq - w) <= 0.5 * step * (1 + 1e-6)))
        with self.assertRaises(ValueError):
            quantize_q8(w, 48)


@unittest.skipUnless(HAVE_BIN, SKIP_MSG)
class TestQuantizedFilesInCpp(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def tconst(self, *args):
        r = subprocess.run([TCONST_BIN, *args], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, f"tconst {args[0]} failed: {r.stderr.strip()}")
        return r.stdout

    def cpp_logits(self, model_path, ids, vocab):
        ids_path, out = self.path("ids.txt"), self.path("logits.f32")
        with open(ids_path, "w") as f:
            f.write(" ".join(str(i) for i in ids) + "\n")
        self.tconst("logits", "--model", model_path, "--ids", ids_path, "--out", out)
        return np.fromfile(out, dtype="<f4").reshape(len(ids), vocab)

    def test_python_q8_and_bf16_files_run_in_cpp(self):
        """The C++ logits of an exported Q8/BF16 file equal PyTorch's on the
        dequantized weights (float64), within the float tolerance of SPEC 6.1."""
        cases = [("tconstformer", {}), ("tlinformer", {}), ("transformer", {"n_block": 3})]
        for seed, (arch, kw) in enumerate(cases):
            model = fresh_model(arch, 20 + seed, **kw)
            for weights in ("q8", "bf16"):
                with self.subTest(arch=arch, weights=weights):
                    path = self.path(f"{arch}_{weights}.safetensors")
                    export_model(model, path, weights=weights, q8_block=16)
                    tensors, _ = read_safetensors(path)
                    self.assertEqual(tensors["embedding.weight"].dtype,
                                     torch.int8 if weights == "q8" else torch.bfloat16)
                    ids = torch.randint(0, 61, (30,), generator=torch.Generator().manual_seed(seed)).tolist()
                    ref_model, _ = load_model_file(path, torch.float64)
                    with torch.no_grad():
                        ref = ref_model(torch.tensor([ids]))[0].numpy()
                    got = self.cpp_logits(path, ids, 61)
                    tol = 1e-4 * (1.0 + np.abs(ref).max())
                    self.assertLess(np.abs(got - ref).max(), tol)

    def test_tconst_quantize_writes_the_exporters_bytes(self):
        model = fresh_model("tconstformer", 31)
        f32 = self.path("m_f32.safetensors")
        export_model(model, f32, tokenizer="bytes")
        for weights, block in (("q8", 32), ("q8", 16), ("q8", 64), ("bf16", None)):
            with self.subTest(weights=weights, block=block):
                py = self.path(f"py_{weights}_{block}.safetensors")
                export_model(model, py, tokenizer="bytes", weights=weights,
                             q8_block=block or 32)
                cpp = self.path(f"cpp_{weights}_{block}.safetensors")
                args = ["quantize", "--in", f32, "--out", cpp, "--type", weights]
                if block:
                    args += ["--block", str(block)]
                self.tconst(*args)
                with open(py, "rb") as a, open(cpp, "rb") as b:
                    self.assertEqual(a.read(), b.read(), "the two quantizers' files differ")


if __name__ == "__main__":
    unittest.main()
