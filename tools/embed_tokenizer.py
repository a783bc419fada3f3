#!/usr/bin/python3
"""Put a GPT-2 tokenizer inside a tconst model file (SPEC section 6.2), so that
the file alone is enough for `tconst generate --prompt TEXT`.

  /usr/bin/python3 tools/embed_tokenizer.py --model in.safetensors \
      --tokenizer DIR_OR_FILE --out out.safetensors

DIR_OR_FILE is a directory with vocab.json + merges.txt (or encoder.json +
vocab.bpe, or tokenizer.json), or one of those files. Tensor bytes are copied
unchanged; --out may equal --model (the file is replaced whole).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tconst_torch.safetensors_io import SafetensorsError  # noqa: E402
from tconst_torch.tokenizer_files import embed_tokenizer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model file to read")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    p.add_argument("--out", required=True, help="model file to write")
    args = p.parse_args(argv)
    try:
        embed_tokenizer(args.model, args.out, args.tokenizer)
    except (ValueError, OSError, SafetensorsError) as e:
        print(f"embed_tokenizer: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) with the tokenizer of {args.tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
