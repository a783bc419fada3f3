#!/usr/bin/python3
"""Side by side: a model file through this project's PyTorch reference (tools/tconst_torch, the
full SPEC section 4 forward in float64) and through the engine (streaming, token by token), with
the largest difference of each position's logits.

  PYTHONPATH=build/python/module examples/python/compare_torch.py models/kjv-tconst.safetensors \
      [--text models/kjv_val.txt] [--tokens 300] [--precision float|double]

Exit status 0 when every position agrees within 2e-4 * (1 + max |logit|) in float (1e-9 in
double), the tolerance of the golden tests.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from tconst_torch import load_model_file  # noqa: E402

import tconst  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--text", help="text to tokenize (default: pseudo-random ids)")
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--precision", choices=("float", "double"), default="float")
    args = p.parse_args()

    engine = tconst.Model(args.model, precision=args.precision)
    V = engine.config["vocab_size"]
    if args.text:
        with open(args.text, "rb") as f:
            ids = engine.tokenizer().encode(f.read())[:args.tokens]
    else:
        ids = np.random.default_rng(0).integers(0, V, args.tokens).tolist()

    reference, _ = load_model_file(args.model, torch.float64)
    with torch.no_grad():
        ref = reference(torch.tensor([ids]))[0].numpy()
    session = engine.session()
    got = np.stack([session.feed(t) for t in ids]).astype(np.float64)

    err = np.abs(got - ref).max(axis=1)
    scale = 1 + np.abs(ref).max()
    tol = (2e-4 if args.precision == "float" else 1e-9) * scale
    c = engine.config
    print(f"{args.model}: {c['architecture']}, {len(ids)} tokens, engine in {args.precision}")
    print(f"{'position':>8}  {'max |engine - torch|':>20}  argmax engine/torch")
    for i in sorted(set(np.linspace(0, len(ids) - 1, 12).astype(int).tolist()) | {int(err.argmax())}):
        print(f"{i:8d}  {err[i]:20.3g}  {int(got[i].argmax())}/{int(ref[i].argmax())}")
    agree = float((got.argmax(axis=1) == ref.argmax(axis=1)).mean())
    print(f"largest difference {err.max():.3g} (tolerance {tol:.3g}); argmax agrees at {agree:.1%}")
    return 0 if err.max() <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
