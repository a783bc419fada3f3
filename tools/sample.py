#!/usr/bin/python3
"""Sample from a byte-level model with the PyTorch implementation (a check
that does not need the C++ library).

  /usr/bin/python3 tools/sample.py --model models/kjv-tconst.safetensors \
      --prompt "And God said" --max-new 300 [--temperature 0.8 --seed 1]

--temperature 0 (the default) is greedy decoding. --checkpoint accepts a
tools/train.py checkpoint instead of a model file.
"""

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from tconst_torch.export import load_model_file  # noqa: E402
from tconst_torch.model import ModelConfig, TConstModel  # noqa: E402


def load(args):
    if args.model:
        model, _ = load_model_file(args.model)
        return model
    ck = torch.load(args.checkpoint, map_location="cpu")
    model = TConstModel(ModelConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval()


@torch.no_grad()
def generate(model, ids, max_new, temperature=0.0, top_k=0, generator=None):
    """Append max_new tokens; each step is the SPEC section 4 forward of the
    whole sequence so far (the streaming result, recomputed)."""
    ids = list(ids)
    for _ in range(max_new):
        logits = model.forward_last(ids).double()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        ids.append(nxt)
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="tconst model file (.safetensors)")
    src.add_argument("--checkpoint", help="tools/train.py checkpoint")
    p.add_argument("--prompt", default="And God said")
    p.add_argument("--max-new", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load(args)
    if model.cfg.vocab_size != 256:
        print("sample.py: only byte-level (V = 256) models are supported", file=sys.stderr)
        return 1
    prompt = list(args.prompt.encode("utf-8"))
    gen = torch.Generator().manual_seed(args.seed)
    out = generate(model, prompt, args.max_new, args.temperature, args.top_k, gen)
    sys.stdout.write(bytes(out).decode("utf-8", errors="replace") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
