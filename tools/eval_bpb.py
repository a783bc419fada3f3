#!/usr/bin/python3
"""Bits per byte of a byte-level model file on a text, with the segment
protocol of tools/train.py (consecutive non-overlapping segments of
--seg-len bytes, each scored from an empty context under the streaming
semantics).

  /usr/bin/python3 tools/eval_bpb.py --model models/kjv-tconst.safetensors \
      --text models/kjv_val.txt [--seg-len 256] [--limit BYTES] [--engine tconst]

--engine tconst scores each segment with the C++ engine through the tconst Python module
(scripts/install-python, or PYTHONPATH=build/python/module) instead of the PyTorch model: the
same segments, streamed through a session, the negative log-likelihood summed in float64.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from tconst_torch.export import load_model_file  # noqa: E402
from train import LN2, evaluate, read_bytes  # noqa: E402


def evaluate_engine(path, data, seg_len, limit, threads):
    """evaluate()'s protocol through the engine: each segment of seg_len + 1 bytes from an empty
    session, its last seg_len bytes predicted; the tail that does not fill a segment as one
    shorter one. Returns bits per byte, or None for a model that is not byte-level."""
    import numpy as np
    try:
        import tconst
    except ImportError:
        raise SystemExit("--engine tconst needs the tconst module: run scripts/install-python, or "
                         "put build/python/module on PYTHONPATH")
    model = tconst.Model(path, threads=threads)
    if model.config["vocab_size"] != 256:
        return None
    data = data.numpy().astype(np.int32)
    if limit:
        data = data[:limit]
    n_seg = (len(data) - 1) // seg_len
    pieces = [data[i * seg_len:i * seg_len + seg_len + 1] for i in range(n_seg)]
    if len(data) - n_seg * seg_len > 1:
        pieces.append(data[n_seg * seg_len:])
    session = model.session()
    total_nll, total_n = 0.0, 0
    for piece in pieces:
        session.reset()
        z = session.score(piece[:-1]).astype(np.float64)
        mx = z.max(axis=1)
        log_sum = mx + np.log(np.exp(z - mx[:, None]).sum(axis=1))
        total_nll += float((log_sum - z[np.arange(len(piece) - 1), piece[1:]]).sum())
        total_n += len(piece) - 1
    return total_nll / total_n / LN2


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, nargs="+", help="one or more model files")
    p.add_argument("--text", required=True)
    p.add_argument("--seg-len", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="score only the first BYTES bytes (0: all)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", choices=("torch", "tconst"), default="torch",
                   help="the PyTorch model (default) or the C++ engine through the tconst module")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = read_bytes(args.text)
    for path in args.model:
        t = time.time()
        if args.engine == "tconst":
            bpb = evaluate_engine(path, data, args.seg_len, args.limit, args.threads)
        else:
            model, _ = load_model_file(path)
            bpb = None if model.cfg.vocab_size != 256 else evaluate(
                model, data, args.seg_len, args.batch, args.limit)
        if bpb is None:
            print(f"{path}: not a byte-level model", file=sys.stderr)
            return 1
        n = min(len(data), args.limit) if args.limit else len(data)
        print(f"{path}: {bpb:.4f} bits/byte over {n} bytes, segments of {args.seg_len} "
              f"({time.time() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
