#!/usr/bin/python3
"""Perplexity (and bits per byte) of a text file under a model, with the engine's batched score():
every token after the first is predicted from all the tokens before it, as `tconst perplexity`
does without --segment.

  PYTHONPATH=build/python/module examples/python/perplexity.py models/kjv-tconst.safetensors \
      models/kjv_val.txt [--limit BYTES]
"""

import argparse
import math
import time

import numpy as np

import tconst


def nll_rows(logits, targets):
    """-log p(target) for each row of logits, in float64."""
    z = logits.astype(np.float64)
    mx = z.max(axis=1)
    log_sum = mx + np.log(np.exp(z - mx[:, None]).sum(axis=1))
    return log_sum - z[np.arange(len(targets)), targets]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--limit", type=int, default=0, help="only the first BYTES bytes (0: all)")
    p.add_argument("--chunk", type=int, default=4096, help="tokens per score() call (memory)")
    p.add_argument("--tokenizer", help="tokenizer files, for a model that does not carry its own")
    p.add_argument("--threads", type=int, help="threads of each call (default: the processors)")
    args = p.parse_args()

    model = tconst.Model(args.model, threads=args.threads)
    tok = tconst.Tokenizer(args.tokenizer) if args.tokenizer else model.tokenizer()
    with open(args.text, "rb") as f:
        data = f.read()
    if args.limit:
        data = data[:args.limit]
    ids = np.array(tok.encode(data), dtype=np.int32)
    if len(ids) < 2:
        raise SystemExit("perplexity needs at least two tokens")

    session = model.session()
    nll, t0 = 0.0, time.perf_counter()
    # The session carries the whole stream: each chunk is scored after everything before it.
    for start in range(0, len(ids) - 1, args.chunk):
        chunk = ids[start:start + args.chunk]
        logits = session.score(chunk)  # row i: the logits after chunk[i], predicting the next id
        targets = ids[start + 1:start + 1 + len(chunk)]
        nll += nll_rows(logits[:len(targets)], targets).sum()
    seconds = time.perf_counter() - t0

    predicted = len(ids) - 1
    predicted_bytes = sum(len(tok.token_bytes(int(t))) for t in ids[1:])
    print(f"tokens            {len(ids)} ({predicted} predicted)")
    print(f"mean nll          {nll / predicted:.6f} nats/token")
    print(f"perplexity        {math.exp(nll / predicted):.4f}")
    print(f"bits per byte     {nll / predicted_bytes / math.log(2):.4f}")
    print(f"time              {seconds:.2f} s ({predicted / seconds:.0f} tokens/s)")


if __name__ == "__main__":
    main()
