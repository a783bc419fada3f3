"""Smoke tests of tools/train.py: a few steps on a tiny corpus, the
checkpoint, resuming, the export of the result and the evaluation."""

import io
import json
import math
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import train  # noqa: E402
from tconst_torch import ModelConfig, build_model, load_model_file, write_model_file  # noqa: E402

TEXT = b"In the beginning God created the heaven and the earth. " * 40


class TestTrain(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.train_path = os.path.join(d, "train.txt")
        self.val_path = os.path.join(d, "val.txt")
        with open(self.train_path, "wb") as f:
            f.write(TEXT)
        with open(self.val_path, "wb") as f:
            f.write(TEXT[:300])
        self.out = os.path.join(d, "run.pt")

    def tearDown(self):
        self.tmp.cleanup()

    def args(self, steps, *extra):
        return ["--train", self.train_path, "--val", self.val_path, "--out", self.out, "--n-embd", "16",
                "--n-head", "2", "--history-window", "8", "--generate-window", "4", "--seq-len", "16",
                "--batch", "3", "--steps", str(steps), "--warmup", "2", "--log-every", "1",
                "--eval-every", "2", "--eval-bytes", "100", *extra]

    def test_train_resume_export(self):
        with redirect_stdout(io.StringIO()):
            train.main(self.args(3))
            ck = torch.load(self.out)
            self.assertEqual(ck["step"], 3)
            train.main(self.args(5, "--resume"))
        ck = torch.load(self.out)
        self.assertEqual(ck["step"], 5)
        self.assertTrue(ck["final"])
        with open(os.path.splitext(self.out)[0] + ".json") as f:
            summary = json.load(f)
        self.assertEqual(summary["steps"], 5)
        self.assertTrue(0 < summary["val_bpb"] < 9)
        # The checkpoint exports to a loadable model file.
        path = os.path.join(self.tmp.name, "m.safetensors")
        write_model_file(path, ModelConfig.from_dict(ck["config"]), ck["model"], tokenizer="bytes")
        model, meta = load_model_file(path)
        self.assertEqual(meta["tconst.tokenizer"], "bytes")

    def test_same_seed_same_run(self):
        with redirect_stdout(io.StringIO()):
            train.main(self.args(2))
            a = torch.load(self.out)["model"]
            os.remove(self.out)
            train.main(self.args(2))
            b = torch.load(self.out)["model"]
        for k in a:
            self.assertTrue(torch.equal(a[k], b[k]), k)

    def test_evaluate_matches_direct_nll(self):
        cfg = ModelConfig(vocab_size=256, n_embd=16, n_head=2, history_window=8, generate_window=4)
        model = build_model(cfg, seed=0)
        data = torch.tensor(list(TEXT[:70]), dtype=torch.long)
        bpb = train.evaluate(model, data, seg_len=16, batch=2)
        # Direct: segments of 17 bytes overlapping by one, plus the tail.
        total, n = 0.0, 0
        with torch.no_grad():
            for s in range(0, 69, 16):
                seg = data[s : s + 17]
                if len(seg) < 2:
                    continue
                logits = model(seg[None, :-1])[0]
                total += F.cross_entropy(logits, seg[1:], reduction="sum").item()
                n += len(seg) - 1
        self.assertEqual(n, 69)
        self.assertAlmostEqual(bpb, total / n / math.log(2), places=5)

    def test_lr_schedule(self):
        a = train.parse_args(["--train", "x", "--val", "y", "--out", "z", "--steps", "100", "--warmup", "10",
                              "--lr", "1.0", "--min-lr-ratio", "0.1"])
        self.assertAlmostEqual(train.lr_at(0, a), 0.1)
        self.assertAlmostEqual(train.lr_at(9, a), 1.0)
        self.assertAlmostEqual(train.lr_at(10, a), 1.0)
        self.assertAlmostEqual(train.lr_at(100, a), 0.1)


if __name__ == "__main__":
    unittest.main()
