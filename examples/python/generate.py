#!/usr/bin/python3
"""Generate text with the tconst engine from Python, printed as it comes.

  PYTHONPATH=build/python/module examples/python/generate.py models/kjv-tconst.safetensors \
      "And God said" [--max-new 200] [--seed 1] [--temperature 0.8] [--stop "\\n\\n"]

(PYTHONPATH is not needed once scripts/install-python has installed the module.)
"""

import argparse
import sys
import time

import tconst


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--max-new", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--tokenizer", help="tokenizer files, for a model that does not carry its own")
    p.add_argument("--threads", type=int, help="threads of each call (default: the processors)")
    args = p.parse_args()

    model = tconst.Model(args.model, threads=args.threads)
    tok = tconst.Tokenizer(args.tokenizer) if args.tokenizer else model.tokenizer()
    session = model.session()
    out = tconst.StreamDecoder(tok)
    sys.stdout.write(args.prompt)
    t0 = time.perf_counter()
    gen = session.generate(tok.encode(args.prompt), max_new_tokens=args.max_new,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                           stop=args.stop, tokenizer=tok)
    for token in gen:
        sys.stdout.write(out.push(token))
        sys.stdout.flush()
    sys.stdout.write(out.flush() + "\n")
    seconds = time.perf_counter() - t0
    print(f"[{gen.generated} tokens in {seconds:.2f} s, stopped by {gen.stop_reason}; "
          f"position {session.position}, cache {session.cache_bytes / 1e6:.2f} MB]", file=sys.stderr)


if __name__ == "__main__":
    main()
