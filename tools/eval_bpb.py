#!/usr/bin/python3
"""Bits per byte of a byte-level model file on a text, with the segment
protocol of tools/train.py (consecutive non-overlapping segments of
--seg-len bytes, each scored from an empty context under the streaming
semantics).

  /usr/bin/python3 tools/eval_bpb.py --model models/kjv-tconst.safetensors \
      --text models/kjv_val.txt [--seg-len 256] [--limit BYTES]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from tconst_torch.export import load_model_file  # noqa: E402
from train import evaluate, read_bytes  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, nargs="+", help="one or more model files")
    p.add_argument("--text", required=True)
    p.add_argument("--seg-len", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="score only the first BYTES bytes (0: all)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = read_bytes(args.text)
    for path in args.model:
        model, _ = load_model_file(path)
        if model.cfg.vocab_size != 256:
            print(f"{path}: not a byte-level model", file=sys.stderr)
            return 1
        t = time.time()
        bpb = evaluate(model, data, args.seg_len, args.batch, args.limit)
        n = min(len(data), args.limit) if args.limit else len(data)
        print(f"{path}: {bpb:.4f} bits/byte over {n} bytes, segments of {args.seg_len} "
              f"({time.time() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
