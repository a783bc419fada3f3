"""Model files that carry their tokenizer (SPEC section 6.2): written by the
Python tools (export and tools/embed_tokenizer.py), read by the C++ program,
which then needs no --tokenizer. Skipped when the program is not built."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from tconst_torch import ModelConfig, build_model, export_model  # noqa: E402
from tconst_torch.safetensors_io import read_safetensors  # noqa: E402
from tconst_torch.tokenizer_files import embed_tokenizer, tokenizer_metadata  # noqa: E402

TCONST_BIN = os.environ.get("TCONST_BIN", os.path.join(ROOT, "build", "examples", "tconst"))
HAVE_BIN = os.path.isfile(TCONST_BIN) and os.access(TCONST_BIN, os.X_OK)
TEXT = "the band and the hand then"
GPT2_DIR = os.environ.get("TCONST_GPT2_VOCAB_DIR", os.path.join(ROOT, "build", "gpt2_vocab"))


def gpt2_spelling(b):
    """GPT-2's printable stand-in for byte b."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if b in printable:
        return chr(b)
    return chr(256 + sorted(set(range(256)) - set(printable)).index(b))


def write_vocab(directory):
    """256 byte tokens and five merges (261 tokens) as vocab.json + merges.txt."""
    vocab = {gpt2_spelling(b): b for b in range(256)}
    merges = [("t", "h"), ("th", "e"), (" ", "the"), ("a", "n"), ("an", "d")]
    sp = lambda s: "".join(gpt2_spelling(c) for c in s.encode())  # noqa: E731
    for left, right in merges:
        vocab[sp(left + right)] = len(vocab)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{sp(l)} {sp(r)}\n" for l, r in merges))


@unittest.skipUnless(HAVE_BIN, f"C++ program not found at {TCONST_BIN}")
class TestEmbeddedTokenizer(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.vocab_dir = os.path.join(self.dir, "vocab")
        os.mkdir(self.vocab_dir)
        write_vocab(self.vocab_dir)
        cfg = ModelConfig(arch="tconstformer", vocab_size=261, n_embd=32, n_head=4, n_block=1,
                          block_inner_depth=2, history_window=6, generate_window=4, ffn_hidden=48)
        self.model = build_model(cfg).init_weights(seed=3, std=0.3)

    def tearDown(self):
        self.tmp.cleanup()

    def tconst(self, *args, stdin=""):
        r = subprocess.run([TCONST_BIN, *args], input=stdin, capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_exported_file_needs_no_tokenizer_flag(self):
        path = os.path.join(self.dir, "m.safetensors")
        export_model(self.model, path, tokenizer="gpt2", tokenizer_files=self.vocab_dir)
        alone = self.tconst("tokenize", "--model", path, stdin=TEXT)
        with_files = self.tconst("tokenize", "--tokenizer", self.vocab_dir, stdin=TEXT)
        self.assertEqual(alone, with_files)
        self.assertLess(len(alone.split()), len(TEXT.encode()))  # merges applied
        gen = ["generate", "--model", path, "--prompt", "the band", "--max-new", "8", "--greedy"]
        self.assertEqual(self.tconst(*gen), self.tconst(*gen, "--tokenizer", self.vocab_dir))

    def test_embedding_into_an_existing_file_keeps_its_tensors(self):
        plain = os.path.join(self.dir, "plain.safetensors")
        export_model(self.model, plain, tokenizer="gpt2")
        carried = os.path.join(self.dir, "carried.safetensors")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "embed_tokenizer.py"),
                            "--model", plain, "--tokenizer", os.path.join(self.vocab_dir, "vocab.json"),
                            "--out", carried], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        before, meta_before = read_safetensors(plain)
        after, meta_after = read_safetensors(carried)
        self.assertEqual(sorted(before), sorted(after))
        for name in before:
            self.assertTrue(before[name].equal(after[name]), name)
        self.assertEqual(meta_after, {**meta_before, **tokenizer_metadata(self.vocab_dir)})
        ids = self.tconst("tokenize", "--model", carried, stdin=TEXT)
        self.assertEqual(ids, self.tconst("tokenize", "--tokenizer", self.vocab_dir, stdin=TEXT))

    @unittest.skipUnless(os.path.isfile(os.path.join(GPT2_DIR, "encoder.json")),
                         f"GPT-2 vocabulary not at {GPT2_DIR} (tools/fetch_gpt2_vocab.sh)")
    def test_real_gpt2_vocabulary(self):
        cfg = ModelConfig(arch="tconstformer", vocab_size=50257, n_embd=16, n_head=2, n_block=1,
                          block_inner_depth=2, history_window=6, generate_window=4, ffn_hidden=16)
        path = os.path.join(self.dir, "gpt2.safetensors")
        export_model(build_model(cfg).init_weights(seed=1, std=0.3), path, tokenizer="gpt2",
                     tokenizer_files=GPT2_DIR)
        text = "In the beginning God created the heaven and the earth. \u00e9t\u00e9 \u4e16\u754c"
        ids = self.tconst("tokenize", "--model", path, stdin=text)
        self.assertEqual(ids, self.tconst("tokenize", "--tokenizer", GPT2_DIR, stdin=text))
        self.assertEqual(self.tconst("detokenize", "--model", path, stdin=ids), text)

    def test_missing_merges_is_an_error(self):
        os.remove(os.path.join(self.vocab_dir, "merges.txt"))
        with self.assertRaisesRegex(ValueError, "vocab.json but not merges.txt"):
            tokenizer_metadata(self.vocab_dir)
        src = os.path.join(self.dir, "plain.safetensors")
        export_model(self.model, src, tokenizer="gpt2")
        with self.assertRaises(ValueError):
            embed_tokenizer(src, src, self.vocab_dir)
        self.assertNotIn("tconst.tokenizer.vocab", read_safetensors(src)[1])  # left as it was


if __name__ == "__main__":
    unittest.main()
