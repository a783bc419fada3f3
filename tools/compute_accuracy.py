#!/usr/bin/env python3
"""How far each compute (SPEC 6.3) moves a model's logits from f32's: docs/benchmarks.md, "Compute".

For each of bf16 and int8, against f32, on the same model file:
  - the largest |logit difference| over the first and the last 1,000 positions of a stream of
    --stream tokens of a text, and over each 1,000 in turn (no drift: no trend along the stream);
  - greedy agreement over --gen generated tokens: the tokens f32 generates are fed to the other
    compute too (teacher forcing), and the share of positions whose argmax agrees is reported,
    with the length of the identical prefix when each compute generates freely.

Usage: tools/compute_accuracy.py --bin build/examples/tconst --model models/kjv-tconst.safetensors
           --text models/kjv_val.txt [--stream 12000] [--gen 2000] [--prompt TEXT]
Only the Python standard library; the model must use the byte tokenizer or a vocabulary of ids
that --text's bytes are valid ids of.
"""
import argparse
import array
import json
import os
import subprocess
import sys
import tempfile


def run(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def logits(binary, model, ids, compute, vocab, tmp):
    ids_path = os.path.join(tmp, "ids.txt")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, ids)))
    out = os.path.join(tmp, f"logits_{compute}.f32")
    run([binary, "logits", "--model", model, "--ids", ids_path, "--out", out, "--compute", compute])
    values = array.array("f")
    with open(out, "rb") as f:
        values.frombytes(f.read())
    return [values[i * vocab:(i + 1) * vocab] for i in range(len(ids))]


def max_diff(a_rows, b_rows):
    return max(max(abs(x - y) for x, y in zip(a, b)) for a, b in zip(a_rows, b_rows))


def argmax(row):
    best = 0
    for i, v in enumerate(row):
        if v > row[best]:
            best = i
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--stream", type=int, default=12000)
    p.add_argument("--gen", type=int, default=2000)
    p.add_argument("--prompt", default="And God said")
    a = p.parse_args()
    vocab = json.loads(run([a.bin, "info", "--model", a.model, "--json"]))["vocab_size"]
    with open(a.text, "rb") as f:
        ids = list(f.read()[:a.stream])
    with tempfile.TemporaryDirectory() as tmp:
        ref = logits(a.bin, a.model, ids, "f32", vocab, tmp)
        gen = {}
        for compute in ("f32", "bf16", "int8"):
            out = run([a.bin, "generate", "--model", a.model, "--prompt", a.prompt, "--greedy",
                       "--max-new", str(a.gen), "--print-ids", "--compute", compute, "--quiet"])
            gen[compute] = [int(x) for x in out.split()]
        prompt_ids = list(a.prompt.encode())
        forced_ids = prompt_ids + gen["f32"]
        forced_ref = logits(a.bin, a.model, forced_ids, "f32", vocab, tmp)
        print(f"model {a.model}, {len(ids)} tokens of {a.text}; {a.gen} generated after {a.prompt!r}")
        print("compute  max|dlogit| first 1000  last 1000  greedy argmax agreement  same prefix")
        for compute in ("bf16", "int8"):
            rows = logits(a.bin, a.model, ids, compute, vocab, tmp)
            first = max_diff(rows[:1000], ref[:1000])
            last = max_diff(rows[-1000:], ref[-1000:])
            forced = logits(a.bin, a.model, forced_ids, compute, vocab, tmp)
            n = len(gen["f32"])
            start = len(prompt_ids) - 1  # the logits after the prompt's last token pick gen[0]
            agree = sum(argmax(forced[start + i]) == argmax(forced_ref[start + i])
                        for i in range(n))
            prefix = 0
            while prefix < min(n, len(gen[compute])) and gen[compute][prefix] == gen["f32"][prefix]:
                prefix += 1
            print(f"{compute:7s}  {first:21.4f}  {last:9.4f}  {agree / n * 100:22.2f} %  "
                  f"{prefix:11d}")
            windows = [max_diff(rows[i:i + 1000], ref[i:i + 1000]) for i in range(0, len(ids), 1000)]
            print("         each 1000 tokens: " + " ".join(f"{w:.3f}" for w in windows))


if __name__ == "__main__":
    main()
