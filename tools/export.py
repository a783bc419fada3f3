#!/usr/bin/python3
"""Export a checkpoint written by tools/train.py as a tconst model file.

  /usr/bin/python3 tools/export.py --checkpoint run.pt --out model.safetensors \
      [--dtype f32|f16|bf16] [--type f32|bf16|q8 [--block B]] [--tokenizer bytes]
      [--embed-tokenizer DIR]

(Checkpoints from the authors' training code go through
tools/convert_checkpoint.py instead.)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from tconst_torch.export import DTYPES, WEIGHT_FORMATS, write_model_file  # noqa: E402
from tconst_torch.quantize import DEFAULT_Q8_BLOCK, Q8_BLOCKS  # noqa: E402
from tconst_torch.model import ModelConfig  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint from tools/train.py")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--type", choices=WEIGHT_FORMATS, default="f32", dest="weights",
                   help="weight matrices as --dtype (f32), BF16 or Q8 (SPEC 6.1)")
    p.add_argument("--block", type=int, choices=Q8_BLOCKS, default=DEFAULT_Q8_BLOCK,
                   help="Q8 block size (with --type q8)")
    p.add_argument("--tokenizer", help="tconst.tokenizer metadata (default: the checkpoint's, e.g. bytes)")
    p.add_argument("--embed-tokenizer", metavar="PATH",
                   help="carry this GPT-2 tokenizer (directory or file) inside the model file")
    args = p.parse_args(argv)
    ck = torch.load(args.checkpoint, map_location="cpu")
    if not isinstance(ck, dict) or "config" not in ck or "model" not in ck:
        print("export: error: not a tools/train.py checkpoint (no 'config'/'model'); "
              "use tools/convert_checkpoint.py for the authors' checkpoints", file=sys.stderr)
        return 1
    cfg = ModelConfig.from_dict(ck["config"])
    tokenizer = args.tokenizer or ck.get("tokenizer")
    try:
        write_model_file(args.out, cfg, ck["model"], dtype=args.dtype, tokenizer=tokenizer,
                         tokenizer_files=args.embed_tokenizer, weights=args.weights,
                         q8_block=args.block)
    except (ValueError, OSError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes): {cfg.arch} step {ck.get('step')} "
          f"val_bpb {ck.get('val_bpb')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
