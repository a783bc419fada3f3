"""Bad input raises tconst.Error (a ValueError) with a message that names the problem, and leaves
a session as it was."""

import os
import tempfile
import threading
import unittest

import numpy as np

import tconst
from bindings_support import (GOLDEN_CASES, KJV_TCONST, KJV_TRANSFORMER, Model, golden_model,
                              kjv_ids)


class TestErrors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = Model(KJV_TCONST)

    def assertError(self, pattern, fn, *args, **kw):
        with self.assertRaisesRegex(tconst.Error, pattern):
            fn(*args, **kw)

    def test_missing_and_invalid_files(self):
        self.assertError(r"cannot open.*no/such/model\.safetensors", tconst.Model,
                         "no/such/model.safetensors")
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "bad.safetensors")
            with open(bad, "wb") as f:
                f.write(b"not a model")
            self.assertError("bad.safetensors", tconst.Model, bad)
        self.assertError("does not exist", tconst.Tokenizer, "no/such/tokenizer.json")
        self.assertError("cannot open snapshot", self.model.load_session, "no/such/a.snap")

    def test_token_outside_vocabulary(self):
        s = self.model.session()
        s.feed(5)
        for bad in (256, -1, 2**40):
            with self.subTest(token=bad):
                self.assertError(r"token id -?\d+ is outside \[0, 256\)", s.feed, bad)
        self.assertError(r"token id 300 is outside \[0, 256\)", s.prefill, [1, 2, 300])
        self.assertError(r"token id 256 is outside", s.score, np.array([1, 256]))
        self.assertError(r"token id 999 is outside", s.generate, [999])
        self.assertError(r"token id 256 is outside", s.generate, [1], stop_ids=[256])
        self.assertError(r"token id 256 is outside", self.model.tokenizer().decode, [256])
        # Nothing was consumed by the failed calls.
        self.assertEqual(s.position, 1)

    def test_wrong_types(self):
        s = self.model.session()
        self.assertError("feed: the token must be an integer, got str", s.feed, "a")
        self.assertError("must be an integer, got float", s.feed, 1.5)
        self.assertError("must be an integer, got bool", s.feed, True)
        self.assertError("must be a sequence of token ids, got str.*Tokenizer", s.prefill, "text")
        self.assertError(r"ids\[1\] must be an integer, got float", s.score, [1, 2.0])
        self.assertError("1-D integer array.*float", s.score, np.zeros(3))
        self.assertError("1-D integer array, got a 2-D", s.prefill, np.zeros((2, 2), np.int32))
        self.assertError("must be a path", tconst.Model, 123)
        self.assertError('precision must be "float" or "double", got "half"', tconst.Model,
                         KJV_TCONST, precision="half")
        self.assertError(r"threads must be in \[1, 1024\], got 0", tconst.Model, KJV_TCONST,
                         threads=0)
        self.assertError("temperature must be a number, got str", s.generate, [1],
                         temperature="hot")
        self.assertError("top_p must be in", s.generate, [1], top_p=0.0)
        self.assertError("stop must be a str or a sequence of str", s.generate, [1], stop=5)
        self.assertError("stop string must not be empty", s.generate, [1], stop=[""])
        self.assertError("must be str or bytes, got list", self.model.tokenizer().encode, [1])
        self.assertError("not valid Unicode", self.model.tokenizer().encode, "\ud800")
        self.assertError("must be a Session, got int", tconst.StreamBatch(self.model).feed, [1], [2])
        self.assertError("StreamBatch: model must be a Model", tconst.StreamBatch, "m")
        self.assertEqual(s.position, 0)

    def test_snapshot_of_another_model(self):
        other = Model(golden_model(GOLDEN_CASES[0])).session()
        other.prefill([1, 2, 3])
        with tempfile.TemporaryDirectory() as d:
            snap = os.path.join(d, "other.snap")
            other.save(snap)
            self.assertError(r"snapshot '.*other\.snap': saved for a different model",
                             self.model.load_session, snap)
            self.assertError("saved with float precision, restoring into double",
                             Model(golden_model(GOLDEN_CASES[0]), precision="double")
                             .load_session, snap)
            with open(snap, "r+b") as f:
                f.seek(40)
                f.write(b"\xff")
            self.assertError("checksum mismatch", Model(golden_model(GOLDEN_CASES[0]))
                             .load_session, snap)
        self.assertError("cannot write snapshot", other.save, "/no/such/dir/a.snap")

    def test_stream_batch_misuse(self):
        baseline = Model(KJV_TRANSFORMER)
        self.assertError("baseline Transformer", tconst.StreamBatch, baseline)
        batch = tconst.StreamBatch(self.model)
        a = self.model.session()
        self.assertError("appears twice", batch.feed, [a, a], [1, 2])
        self.assertError("another model", batch.feed, [Model(KJV_TCONST).session()], [1])
        self.assertError("1 sessions but 2 tokens", batch.feed, [a], [1, 2])
        self.assertEqual(a.position, 0)

    def test_generate_without_prompt_or_tokenizer(self):
        s = self.model.session()
        self.assertError("generate needs a prompt", s.generate, [])
        gpt2_like = Model(golden_model(GOLDEN_CASES[0])).session()
        self.assertError("names no tokenizer", gpt2_like.generate, [1], stop=["x"])

    def test_session_used_by_two_threads(self):
        # A session is not thread-safe: a second thread's call during a long one raises.
        s = self.model.session()
        ids = kjv_ids(2048)
        errors, done = [], threading.Event()

        def long_call():
            while True:
                try:
                    s.score(ids)
                    break
                except tconst.Error:  # a feed of the main thread held the session: try again
                    continue
            done.set()

        t = threading.Thread(target=long_call)
        t.start()
        while not done.is_set():
            try:
                s.feed(1)
            except tconst.Error as e:
                errors.append(str(e))
                break
        t.join()
        self.assertTrue(errors, "the long call ended before a second call could overlap it")
        self.assertIn("in use by another thread", errors[0])


if __name__ == "__main__":
    unittest.main()
