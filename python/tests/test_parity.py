"""The bindings give what the engine gives: logits bit for bit equal to `tconst logits` for each
architecture, the PyTorch reference's logits within the golden tolerance, the ids of `tconst
generate` for a seed, exact snapshot round trips, StreamBatch equal to separate feeds."""

import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

import tconst
from bindings_support import (GOLDEN_CASES, KJV_TCONST, KJV_TEXT, KJV_TRANSFORMER, ROOT, Model,
                              cli_generate, cli_logits, golden_ids, golden_model, kjv_ids,
                              run_tconst)

try:
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from tconst_torch import load_model_file
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


class TestModule(unittest.TestCase):
    def test_version_and_kernels(self):
        self.assertRegex(tconst.__version__, r"^\d+\.\d+\.\d+$")
        self.assertIn(tconst.vector_kernels(), ("avx512", "avx2", "none"))
        self.assertIsInstance(tconst.openmp, bool)
        self.assertTrue(issubclass(tconst.Error, ValueError))

    def test_config(self):
        c = Model(KJV_TCONST).config
        self.assertEqual((c["architecture"], c["vocab_size"], c["d_model"], c["heads"], c["blocks"],
                          c["inner_depth"], c["window"], c["history_window"]),
                         ("tconstformer", 256, 128, 4, 2, 4, 64, 64))
        self.assertEqual(c["tokenizer"], "bytes")
        self.assertEqual(c["precision"], "float")
        b = Model(golden_model("transformer_L4"), precision="double").config
        self.assertEqual((b["architecture"], b["blocks"], b["precision"]),
                         ("transformer", 4, "double"))
        self.assertNotIn("window", b)

    def test_tokenizer_round_trip(self):
        tok = Model(KJV_TCONST).tokenizer()
        self.assertEqual(tok.name, "bytes")
        ids = tok.encode("In the beginning")
        self.assertEqual(ids, list(b"In the beginning"))
        self.assertEqual(tok.decode(ids), "In the beginning")
        self.assertEqual(tok.decode(tok.encode("é")), "é")
        d = tconst.StreamDecoder(tok)
        pieces = [d.push(i) for i in tok.encode("aé")]
        self.assertEqual(pieces, ["a", "", "é"])
        self.assertEqual(d.flush(), "")


    def test_numpy_ids(self):
        # numpy integers and integer arrays are ids as ints and lists are.
        model = Model(KJV_TCONST)
        ids = kjv_ids(20)
        a, b = model.session(), model.session()
        self.assertTrue(same_bits(a.feed(ids[0]), b.feed(np.int32(ids[0]))))
        self.assertTrue(same_bits(a.prefill(ids[1:]), b.prefill(np.array(ids[1:], np.uint8))))
        self.assertEqual(a.tokens, b.tokens)


class TestLogits(unittest.TestCase):
    def cases(self):
        """(name, model file, ids): each architecture's golden model, and the bundled models over
        300 bytes (four resyncs with a compressed context)."""
        for case in GOLDEN_CASES:
            yield case, golden_model(case), golden_ids(case)
        yield "kjv-tconst", KJV_TCONST, kjv_ids(300)
        yield "kjv-transformer", KJV_TRANSFORMER, kjv_ids(300)

    def test_feed_equals_cli_bit_for_bit(self):
        for name, path, ids in self.cases():
            for precision in ("float", "double"):
                with self.subTest(model=name, precision=precision):
                    model = Model(path, precision=precision)
                    V = model.config["vocab_size"]
                    s = model.session()
                    rows = np.stack([s.feed(t) for t in ids])
                    self.assertEqual(rows.dtype, np.float32 if precision == "float" else np.float64)
                    self.assertEqual(rows.shape, (len(ids), V))
                    ref = cli_logits(path, ids, V, precision)
                    # The program writes float32 (SPEC section 7): a double row rounded once.
                    self.assertTrue(same_bits(rows.astype(np.float32), ref),
                                    f"max difference {np.abs(rows - ref).max():.3g}")
                    self.assertEqual(s.position, len(ids))

    def test_score_and_prefill_equal_the_engine(self):
        # score and prefill are the engine's batched paths; they equal feeding within rounding.
        for name, path, ids in self.cases():
            with self.subTest(model=name):
                model = Model(path)
                s = model.session()
                rows = np.stack([s.feed(t) for t in ids])
                all_rows = model.session().score(ids)
                self.assertEqual(all_rows.shape, rows.shape)
                tol = 1e-4 * (1 + np.abs(rows).max())
                self.assertLess(np.abs(all_rows - rows).max(), tol)
                last = model.session().prefill(ids)
                self.assertLess(np.abs(last - rows[-1]).max(), tol)

    @unittest.skipUnless(HAVE_TORCH, "PyTorch is not installed (Debian: python3-torch)")
    def test_equal_to_pytorch_reference(self):
        # The golden tolerance (tests/data/golden/README.md): 2e-4 * (1 + max |logit|), against
        # tools/tconst_torch in float64 from the same file.
        for case in GOLDEN_CASES:
            with self.subTest(case=case):
                path, ids = golden_model(case), golden_ids(case)
                ref_model, _ = load_model_file(path, torch.float64)
                with torch.no_grad():
                    ref = ref_model(torch.tensor([ids]))[0].numpy()
                tol = 2e-4 * (1 + np.abs(ref).max())
                model = Model(path)
                s = model.session()
                fed = np.stack([s.feed(t) for t in ids])
                self.assertLess(np.abs(fed - ref).max(), tol)
                self.assertLess(np.abs(model.session().score(ids) - ref).max(), tol)
                double = Model(path, precision="double").session().score(ids)
                self.assertLess(np.abs(double - ref).max(), 1e-9 * (1 + np.abs(ref).max()))


class TestGenerate(unittest.TestCase):
    def test_seeded_sampling_equals_cli(self):
        for case in GOLDEN_CASES:
            path, prompt = golden_model(case), golden_ids(case, "prompt.txt")
            for seed in (1, 7):
                with self.subTest(case=case, seed=seed):
                    s = Model(path).session()
                    got = list(s.generate(prompt, max_new_tokens=40, temperature=0.9, top_p=0.9,
                                          top_k=20, seed=seed))
                    want = cli_generate(path, prompt, "--max-new", "40", "--temperature", "0.9",
                                        "--top-p", "0.9", "--top-k", "20", "--seed", str(seed))
                    self.assertEqual(got, want)
                    self.assertEqual(s.position, len(prompt) + 40)

    def test_greedy_equals_golden_reference(self):
        for case in GOLDEN_CASES:
            with self.subTest(case=case):
                prompt = golden_ids(case, "prompt.txt")
                want = golden_ids(case, "ref_greedy.txt")
                s = Model(golden_model(case)).session()
                gen = s.generate(prompt, max_new_tokens=len(want), greedy=True)
                self.assertIsNone(gen.stop_reason)
                self.assertEqual(list(gen), want)
                self.assertEqual((gen.stop_reason, gen.generated), ("budget", len(want)))

    def test_stop_string_equals_cli(self):
        prompt = list(b"And God said, Let there be light")
        model = Model(KJV_TCONST)
        for stop in (":", "th"):
            with self.subTest(stop=stop):
                gen = model.session().generate(prompt, max_new_tokens=200, seed=3, stop=[stop])
                got = list(gen)
                want = cli_generate(KJV_TCONST, prompt, "--max-new", "200", "--seed", "3",
                                    "--stop", stop)
                self.assertEqual(got, want)
                self.assertEqual(gen.stop_reason, "stop_string")
                self.assertIn(stop, bytes(got).decode())

    def test_stop_id_and_continuation(self):
        model = Model(KJV_TCONST)
        s = model.session()
        gen = s.generate(list(b"In the beginning"), max_new_tokens=300, seed=2,
                         stop_ids=[ord(" ")])
        got = list(gen)
        self.assertEqual(got[-1], ord(" "))
        self.assertNotIn(ord(" "), got[:-1])
        self.assertEqual(gen.stop_reason, "stop_id")
        # Without ids, generation continues the session's stream.
        more = list(s.generate(max_new_tokens=5, greedy=True))
        self.assertEqual(len(more), 5)
        self.assertEqual(s.tokens[-5:], more)


class TestSnapshotAndBatch(unittest.TestCase):
    def test_snapshot_round_trip_is_exact(self):
        for name, path, n in (("kjv-tconst", KJV_TCONST, 150), ("kjv-transformer", KJV_TRANSFORMER, 150),
                              ("tlin", golden_model("tlin_D4_W8_H8"), 30)):
            for precision in ("float", "double"):
                with self.subTest(model=name, precision=precision):
                    model = Model(path, precision=precision)
                    V = model.config["vocab_size"]
                    ids = [t % V for t in kjv_ids(n + 40)]
                    s = model.session()
                    s.prefill(ids[:n])
                    with tempfile.TemporaryDirectory() as d:
                        snap = os.path.join(d, "a.snap")
                        s.save(snap)
                        s2 = model.load_session(snap)
                    self.assertEqual((s2.position, s2.tokens, s2.cache_bytes),
                                     (s.position, s.tokens, s.cache_bytes))
                    self.assertTrue(same_bits(s2.logits, s.logits))
                    for t in ids[n:]:
                        self.assertTrue(same_bits(s2.feed(t), s.feed(t)))

    def test_stream_batch_equals_separate_feeds(self):
        model = Model(KJV_TCONST)
        a, b = model.session(), model.session()
        ra, rb = model.session(), model.session()
        a.prefill(kjv_ids(70)), ra.prefill(kjv_ids(70))
        b.prefill(kjv_ids(5, 500)), rb.prefill(kjv_ids(5, 500))
        batch = tconst.StreamBatch(model)
        for ta, tb in zip(kjv_ids(80, 1000), kjv_ids(80, 2000)):
            rows = batch.feed([a, b], [ta, tb])
            self.assertEqual(rows.shape, (2, 256))
            want = np.stack([ra.feed(ta), rb.feed(tb)])
            self.assertLess(np.abs(rows - want).max(), 1e-4 * (1 + np.abs(want).max()))
        self.assertEqual((a.position, b.position), (150, 85))
        self.assertEqual(a.tokens, ra.tokens)


class TestExamples(unittest.TestCase):
    """examples/python/ and tools/eval_bpb.py run and agree with the tconst program or the
    PyTorch model."""

    def run_example(self, name, *args):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", name), *args],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_perplexity_equals_cli(self):
        with tempfile.TemporaryDirectory() as d:
            text = os.path.join(d, "text.txt")
            with open(KJV_TEXT, "rb") as f, open(text, "wb") as out:
                out.write(f.read(600))
            got = self.run_example("perplexity.py", KJV_TCONST, text, "--chunk", "250",
                                   "--threads", "1")
            want = run_tconst("perplexity", "--model", KJV_TCONST, "--text", text)
        line = [ln for ln in want.splitlines() if ln.startswith("mean nll")]
        self.assertEqual(len(line), 1, want)
        self.assertIn(line[0], got)

    def test_generate(self):
        got = self.run_example("generate.py", KJV_TCONST, "And God said", "--max-new", "30",
                               "--seed", "4", "--threads", "1")
        want = cli_generate(KJV_TCONST, list(b"And God said"), "--max-new", "30", "--seed", "4")
        self.assertEqual(got, "And God said" + bytes(want).decode(errors="replace") + "\n")

    @unittest.skipUnless(HAVE_TORCH, "PyTorch is not installed (Debian: python3-torch)")
    def test_eval_bpb_engine_equals_torch(self):
        # tools/eval_bpb.py: the same bits per byte from the engine as from the PyTorch model.
        def bpb(engine):
            r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_bpb.py"),
                                "--model", KJV_TCONST, "--text", KJV_TEXT, "--limit", "1200",
                                "--seg-len", "256", "--engine", engine],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.split(": ")[1].split(" bits/byte")[0]

        self.assertEqual(bpb("tconst"), bpb("torch"))

    @unittest.skipUnless(HAVE_TORCH, "PyTorch is not installed (Debian: python3-torch)")
    def test_compare_torch(self):
        out = self.run_example("compare_torch.py", golden_model("tlin_D4_W8_H8"), "--tokens", "40")
        self.assertIn("argmax agrees at 100.0%", out)


if __name__ == "__main__":
    unittest.main()
