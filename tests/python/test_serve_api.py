"""`tconst serve`'s API for evaluation tools and clients, over real loopback HTTP.

Log-probabilities (`logprobs`, `echo`, lists of prompts) checked against `tconst perplexity
--per-token`, which scores with `Session::score`; `/v1/models`; the tokenizer endpoints in
llama-server's and vLLM's shapes. The server is the one test_serve.py starts.

Run from the repository root:
  TCONST_BIN=$PWD/build/examples/tconst python3 -m unittest tests/python/test_serve_api.py -v
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_serve import (HAVE_SERVE, MODEL, PROMPT, ROOT, SKIP_MSG, TCONST_BIN,  # noqa: E402
                        Server, text_ids)

VAL = os.path.join(ROOT, "models", "kjv_val.txt")


def score_tokens(ids, tmpdir):
    """Session::score through `tconst perplexity --per-token`: for each position p >= 1,
    (log p(ids[p] | ids[:p]), the most likely id there)."""
    path = os.path.join(tmpdir, "ids.txt")
    with open(path, "w") as f:
        f.write(" ".join(map(str, ids)))
    out = subprocess.run([TCONST_BIN, "perplexity", "--model", MODEL, "--ids", path,
                          "--per-token", "--quiet", "--threads", "1"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for i, line in enumerate(out.split("\n")[:-1]):
        pos, tok, logprob, top = line.split()
        assert int(pos) == i + 1 and int(tok) == ids[i + 1], line
        rows.append((float(logprob), int(top)))
    assert len(rows) == len(ids) - 1
    return rows


def eval_pairs(n):
    """n (context, continuation) pairs from the validation text: a verse without its last word and
    that word with its space; every other one, a verse up to its last word's first letter and the
    next letter (which the model often gets right: greedy continuations)."""
    with open(VAL, encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n") if 40 <= len(ln) <= 160 and ln.isascii()
                 and " " in ln]
    step = len(lines) // n
    pairs = []
    for i, ln in enumerate(lines[::step][:n]):
        cut = ln.rindex(" ")
        pairs.append((ln[:cut], ln[cut:]) if i % 2 == 0 else (ln[:cut + 2], ln[cut + 2:cut + 3]))
    return pairs


def parse_logprobs_like_lm_eval(reply, ctxlens):
    """What lm-evaluation-harness's local-completions model reads back: per choice (by index), the
    sum of token_logprobs over the continuation and whether each continuation token was the top
    alternative."""
    res = []
    for choice, ctxlen in zip(sorted(reply["choices"], key=lambda c: c["index"]), ctxlens):
        lps = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        greedy = all(lp == max(top.values()) for lp, top in zip(lps, tops))
        res.append((sum(lps), greedy))
    return res


def stream_events(server, body):
    """Every event of a streamed completion, [DONE] excluded."""
    c = server.conn()
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)))
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    events = []
    for raw in r:
        line = raw.decode("utf-8").rstrip("\n")
        if line.startswith("data: "):
            if line == "data: [DONE]":
                break
            events.append(json.loads(line[len("data: "):]))
    c.close()
    return events


def merge_stream(events):
    """The choices of a streamed reply put together: index -> (text, ids, logprobs, finish)."""
    out = {}
    for e in events:
        for ch in e["choices"]:
            text, ids, lp, fin = out.get(ch["index"], ("", [], None, None))
            text += ch["text"]
            ids = ids + ch["token_ids"]
            if ch["logprobs"] is not None:
                lp = lp or {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                            "text_offset": []}
                for k in lp:
                    lp[k] = lp[k] + ch["logprobs"][k]
            out[ch["index"]] = (text, ids, lp, ch["finish_reason"] or fin)
    return out


@unittest.skipUnless(HAVE_SERVE, SKIP_MSG)
class TestServeApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.server = Server("--alias", "kjv-test")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def post(self, path, body):
        return self.server.request("POST", path, body)

    def test_loglikelihood_as_lm_eval_sends_and_reads_it(self):
        # scripts/sanitize runs fewer pairs: each reference is a run of the instrumented program.
        n = int(os.environ.get("TCONST_SERVE_API_PAIRS", "100"))
        pairs = eval_pairs(n)
        self.assertEqual(len(pairs), n)
        refs = []
        for ctx, cont in pairs:
            ids = text_ids(ctx + cont)
            rows = score_tokens(ids, self.tmp.name)[len(ctx) - 1:]  # the continuation's
            refs.append((sum(lp for lp, _ in rows),
                         all(top == ids[len(ctx) + i] for i, (_, top) in enumerate(rows))))
        got = []
        for b in range(0, n, 25):  # batches of token-id prompts, as the harness sends them
            batch = pairs[b:b + 25]
            body = {"model": "kjv-test", "prompt": [text_ids(c + x) for c, x in batch],
                    "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}
            status, reply, _ = self.post("/v1/completions", body)
            self.assertEqual(status, 200, reply)
            self.assertEqual([ch["index"] for ch in reply["choices"]], list(range(len(batch))))
            for ch, (c, x) in zip(reply["choices"], batch):
                self.assertEqual(ch["token_ids"][:-1], text_ids(c + x))  # echo, then one token
                self.assertIsNone(ch["logprobs"]["token_logprobs"][0])
            got += parse_logprobs_like_lm_eval(reply, [len(c) for c, _ in batch])
        for i, ((ll, greedy), (ref_ll, ref_greedy)) in enumerate(zip(got, refs)):
            self.assertAlmostEqual(ll, ref_ll, delta=1e-4, msg=f"pair {i}: {pairs[i]}")
            self.assertEqual(greedy, ref_greedy, f"pair {i}: {pairs[i]}")
        # Both kinds of continuation are among the 100 pairs, so the flag is really checked.
        if n == 100:
            self.assertGreater(sum(g for _, g in refs), 5)
            self.assertGreater(sum(not g for _, g in refs), 5)

    def test_logprobs_streamed_and_whole_are_the_raw_distribution(self):
        body = {"prompt": PROMPT, "max_tokens": 40, "seed": 5, "temperature": 0.4, "top_k": 5,
                "logprobs": 5}
        status, whole, _ = self.post("/v1/completions", body)
        self.assertEqual(status, 200, whole)
        ch = whole["choices"][0]
        lp = ch["logprobs"]
        ids = ch["token_ids"]
        self.assertEqual(len(ids), 40)
        self.assertEqual(lp["tokens"], [bytes([t]).decode("latin-1") if t < 128
                                        else "bytes:\\x%02x" % t for t in ids])
        # Offsets count characters from the prompt's start (OpenAI's convention).
        self.assertEqual(lp["text_offset"], list(range(len(PROMPT), len(PROMPT) + 40)))
        for top, tok, tlp in zip(lp["top_logprobs"], lp["tokens"], lp["token_logprobs"]):
            self.assertLessEqual(len(top), 5)
            self.assertGreaterEqual(max(top.values()), tlp)
            self.assertIn(tok, top)  # top_k 5 samples among the 5 likeliest
            self.assertEqual(top[tok], tlp)
        # The logprobs are those of the raw distribution (temperature 0.4 and top_k ignored): the
        # model's own scores of the same tokens.
        rows = score_tokens(text_ids(PROMPT) + ids, self.tmp.name)[len(PROMPT) - 1:]
        for (ref, _), got in zip(rows, lp["token_logprobs"]):
            self.assertAlmostEqual(got, ref, delta=1e-4)
        # Streamed: the same tokens, logprobs and offsets, piece by piece.
        merged = merge_stream(stream_events(self.server, body))
        text, sids, slp, finish = merged[0]
        self.assertEqual((text, sids, finish), (ch["text"], ids, "length"))
        self.assertEqual(slp, lp)

    def test_echo_with_no_new_tokens(self):
        body = {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 3}
        status, reply, _ = self.post("/v1/completions", body)
        self.assertEqual(status, 200, reply)
        ch = reply["choices"][0]
        self.assertEqual(ch["text"], PROMPT)
        self.assertEqual(ch["token_ids"], text_ids(PROMPT))
        lp = ch["logprobs"]
        self.assertEqual("".join(lp["tokens"]), PROMPT)
        self.assertEqual(lp["text_offset"], list(range(len(PROMPT))))
        self.assertIsNone(lp["token_logprobs"][0])
        self.assertIsNone(lp["top_logprobs"][0])
        self.assertEqual(reply["usage"]["completion_tokens"], 0)
        rows = score_tokens(text_ids(PROMPT), self.tmp.name)
        for (ref, top), got, alts in zip(rows, lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
            self.assertAlmostEqual(got, ref, delta=1e-5)
            self.assertEqual(len(alts), 3)
            self.assertEqual(max(alts, key=alts.get), chr(top))
        # Echo without logprobs: the text and ids, and logprobs null.
        status, plain, _ = self.post("/v1/completions", dict(body, logprobs=None, max_tokens=4,
                                                             temperature=0))
        self.assertEqual(status, 200, plain)
        self.assertTrue(plain["choices"][0]["text"].startswith(PROMPT))
        self.assertEqual(len(plain["choices"][0]["token_ids"]), len(PROMPT) + 4)
        self.assertIsNone(plain["choices"][0]["logprobs"])

    def test_list_of_prompts_gives_one_choice_each(self):
        prompts = ["In the beginning", "And God said", "The LORD is my shepherd"]
        body = {"prompt": prompts, "max_tokens": 20, "seed": 9, "temperature": 0.8}
        steps = self.server.metrics()["tconst_step_seconds_count"]
        status, reply, _ = self.post("/v1/completions", body)
        self.assertEqual(status, 200, reply)
        # The prompts share joint steps (60 tokens one by one would take 60 steps; together, 20
        # to 40 as the prefills on the side thread end at different times).
        self.assertLess(self.server.metrics()["tconst_step_seconds_count"] - steps, 60)
        self.assertEqual([c["index"] for c in reply["choices"]], [0, 1, 2])
        for p, ch in zip(prompts, reply["choices"]):
            _, one, _ = self.post("/v1/completions", dict(body, prompt=p))
            self.assertEqual(ch["token_ids"], one["choices"][0]["token_ids"])
            self.assertEqual(ch["text"], one["choices"][0]["text"])
        self.assertEqual(reply["usage"]["prompt_tokens"], sum(len(p) for p in prompts))
        self.assertEqual(reply["usage"]["completion_tokens"], 60)
        # Streamed: each event names its choice; each choice ends once, the last event has usage.
        events = stream_events(self.server, dict(body, prompt=[text_ids(p) for p in prompts]))
        merged = merge_stream(events)
        for i, ch in enumerate(reply["choices"]):
            self.assertEqual(merged[i][1], ch["token_ids"])
            self.assertEqual(merged[i][3], "length")
        self.assertEqual(sum(1 for e in events for c in e["choices"] if c["finish_reason"]), 3)
        self.assertEqual(events[-1]["usage"]["completion_tokens"], 60)

    def test_models_and_tokenizer_endpoints(self):
        status, models, _ = self.server.request("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual(models["object"], "list")
        self.assertEqual([m["id"] for m in models["data"]], ["kjv-test"])
        self.assertEqual(models["data"][0]["object"], "model")
        _, reply, _ = self.post("/v1/completions", {"prompt": "a", "max_tokens": 1})
        self.assertEqual(reply["model"], "kjv-test")
        text = "In the beginning \u00e9"
        for key in ("content", "prompt"):  # llama-server's and vLLM's shapes
            status, tok, _ = self.post("/tokenize", {key: text})
            self.assertEqual(status, 200, tok)
            self.assertEqual(tok["tokens"], text_ids(text))
            status, back, _ = self.post("/detokenize", {"tokens": tok["tokens"]})
            self.assertEqual(status, 200, back)
            self.assertEqual(back[key], text)
        status, info, _ = self.server.request("GET", "/tokenizer_info")
        self.assertEqual(status, 200)
        self.assertEqual(info["kind"], "bytes")
        self.assertEqual(info["vocab_size"], 256)
        self.assertIn("eos_token", info)
        self.assertIn("bos_token", info)
        # A model file's name is its id when there is no --alias.
        other = Server()
        try:
            _, models, _ = other.request("GET", "/v1/models")
            self.assertEqual(models["data"][0]["id"], os.path.basename(MODEL))
        finally:
            other.stop()

    def test_bad_requests_are_400_with_a_message(self):
        sid = self.server.new_session()
        cases = [
            ("/v1/completions", {"prompt": "a", "logprobs": 21}, "logprobs"),
            ("/v1/completions", {"prompt": "a", "logprobs": -1}, "logprobs"),
            ("/v1/completions", {"prompt": "a", "logprobs": True}, "logprobs"),
            ("/v1/completions", {"prompt": "a", "echo": "yes"}, "echo"),
            ("/v1/completions", {"prompt": [[]]}, "empty"),
            ("/v1/completions", {"prompt": ["a", 3]}, "list of prompts"),
            # The message quotes the start of the bad element, cut inside a character.
            ("/v1/completions", {"prompt": ["a", {"kk": "\u00e9" * 40}]}, "list of prompts"),
            ("/v1/completions", {"prompt": [[1, 2], [3, "x"]]}, "prompt"),
            ("/v1/completions", {"prompt": [[1, 256]]}, "outside"),
            ("/v1/completions", {"prompt": ["a"] * 200}, "at most"),
            (f"/v1/sessions/{sid}/completions", {"prompt": ["a", "b"]}, "one prompt"),
            ("/tokenize", {}, "content"),
            ("/tokenize", {"content": 5}, "content"),
            ("/detokenize", {"tokens": "abc"}, "tokens"),
            ("/detokenize", {"tokens": [1, 999]}, "outside"),
        ]
        for path, body, words in cases:
            status, reply, _ = self.post(path, body)
            self.assertEqual(status, 400, (body, reply))
            self.assertIn(words, reply["error"]["message"], body)
        # A path that is not UTF-8 once decoded: 404 naming it, and the server lives on.
        status, reply, _ = self.server.request("GET", "/%FFx")
        self.assertEqual(status, 404, reply)
        self.assertIn("no route", reply["error"]["message"])
        status, health, _ = self.server.request("GET", "/health")
        self.assertEqual(status, 200)


if __name__ == "__main__":
    unittest.main()
