#!/usr/bin/python3
"""Convert a checkpoint trained with the authors' public TConstFormer /
TLinFormer code into a tconst model file (SPEC section 6).

  /usr/bin/python3 tools/convert_checkpoint.py --checkpoint ckpt.pt \
      --config model.yaml --out model.safetensors [--dtype f32|f16|bf16] [--type f32|bf16|q8 [--block B]] \
      [--arch tconstformer|tlinformer|transformer] [--tokenizer gpt2] \
      [--embed-tokenizer DIR]

--config is the YAML model config (keys vocab_size, n_embd, n_head,
n_transformer_block, block_inner_depth, history_windown_size,
generate_window_size); without it, the config stored in the checkpoint
under `config` is used. The architecture defaults to what the tensor names
show (compress/hidden layers: tconstformer; plain layers: transformer);
TLinFormer checkpoints have the same tensor names as TConstFormer ones, so
they need --arch tlinformer.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tconst_torch.convert import ConversionError, convert  # noqa: E402
from tconst_torch.export import DTYPES, WEIGHT_FORMATS  # noqa: E402
from tconst_torch.quantize import DEFAULT_Q8_BLOCK, Q8_BLOCKS  # noqa: E402
from tconst_torch.model import ARCHITECTURES  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="file saved with torch.save")
    p.add_argument("--config", help="YAML model config (default: the checkpoint's own)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--type", choices=WEIGHT_FORMATS, default="f32", dest="weights",
                   help="weight matrices as --dtype (f32), BF16 or Q8 (SPEC 6.1)")
    p.add_argument("--block", type=int, choices=Q8_BLOCKS, default=DEFAULT_Q8_BLOCK,
                   help="Q8 block size (with --type q8)")
    p.add_argument("--arch", choices=ARCHITECTURES, help="default: inferred from the tensor names")
    p.add_argument("--tokenizer", help="tconst.tokenizer metadata (default: bytes for V=256, gpt2 for V=50257)")
    p.add_argument("--drop-unexpected", action="store_true",
                   help="drop tensors the format does not know instead of failing")
    p.add_argument("--embed-tokenizer", metavar="PATH",
                   help="carry this GPT-2 tokenizer (directory or file) inside the model file")
    args = p.parse_args(argv)
    try:
        cfg = convert(args.checkpoint, args.out, config=args.config, arch=args.arch, dtype=args.dtype,
                      tokenizer=args.tokenizer, tokenizer_files=args.embed_tokenizer,
                      drop_unexpected=args.drop_unexpected,
                      weights=args.weights, q8_block=args.block,
                      log=lambda m: print(f"convert_checkpoint: {m}", file=sys.stderr))
    except (ConversionError, ValueError, OSError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {cfg.arch} V={cfg.vocab_size} d={cfg.n_embd} h={cfg.n_head} "
          f"blocks={cfg.n_block} f={cfg.ffn_hidden} tied={cfg.tied} dtype={args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
