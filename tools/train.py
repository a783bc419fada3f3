#!/usr/bin/python3
"""Train a byte-level TConstFormer / TLinFormer / Transformer with the
chunked (streaming-exact) forward of tconst_torch.

Deterministic given --seed and the thread count: the model is initialised
from its own generator and the training crops are drawn from a second one,
so two runs with the same seed but different architectures see exactly the
same bytes in the same order (used for the parity comparison).

Validation bits per byte: the validation text is cut into consecutive,
non-overlapping segments of --eval-len + 1 bytes; each segment is run from
an empty context and every byte after its first is scored under the
streaming semantics (chunks of W bytes, each with the segment's full
preceding context). bits/byte = mean NLL in nats / ln 2.

Example (the bundled demo model, see docs/training.md):
  OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tools/train.py \
      --train build/kjv/kjv_train.txt --val models/kjv_val.txt \
      --out build/kjv/kjv-tconst.pt
"""

import argparse
import json
import math
import os
import sys
import time

# Keep BLAS single-threaded unless the caller chose otherwise; this must
# happen before numpy/torch load the BLAS library.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tconst_torch.model import ARCHITECTURES, ModelConfig, build_model  # noqa: E402

LN2 = math.log(2.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training text (bytes)")
    p.add_argument("--val", required=True, help="validation text (bytes)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); a .json summary goes next to it")
    p.add_argument("--log", help="also append log lines to this file")
    p.add_argument("--arch", choices=ARCHITECTURES, default="tconstformer")
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-block", type=int, default=2, help="blocks (tconst/tlin) or layers (transformer)")
    p.add_argument("--inner-depth", type=int, default=4)
    p.add_argument("--history-window", type=int, default=64)
    p.add_argument("--generate-window", type=int, default=64)
    p.add_argument("--ffn-hidden", type=int, default=0, help="0: 8d/3 rounded up to 64")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-len", type=int, default=0, help="validation segment length (0: --seq-len)")
    p.add_argument("--eval-bytes", type=int, default=32768,
                   help="bytes of the validation text used for the periodic evaluations")
    p.add_argument("--final-eval-bytes", type=int, default=0,
                   help="bytes used for the final evaluation (0: the whole validation text)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    return p.parse_args(argv)


class Logger:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8") if path else None

    def __call__(self, msg):
        print(msg, flush=True)
        if self.f:
            self.f.write(msg + "\n")
            self.f.flush()


def read_bytes(path):
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()


def lr_at(step, args):
    """Linear warmup, then cosine from --lr down to --lr * --min-lr-ratio."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate(model, data, seg_len, batch, limit=0):
    """Validation bits per byte over non-overlapping segments (see module doc)."""
    model.eval()
    if limit:
        data = data[:limit]
    n_seg = (len(data) - 1) // seg_len
    total_nll, total_n = 0.0, 0
    for s in range(0, n_seg, batch):
        rows = [data[i * seg_len : i * seg_len + seg_len + 1] for i in range(s, min(n_seg, s + batch))]
        x = torch.stack(rows)
        logits = model(x[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_n += x[:, 1:].numel()
    # The tail that does not fill a whole segment is scored as one shorter one.
    tail = data[n_seg * seg_len :]
    if len(tail) > 1:
        logits = model(tail[None, :-1])
        total_nll += F.cross_entropy(logits[0], tail[1:], reduction="sum").item()
        total_n += len(tail) - 1
    model.train()
    return total_nll / total_n / LN2


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = Logger(args.log)
    eval_len = args.eval_len or args.seq_len

    train = read_bytes(args.train)
    val = read_bytes(args.val)
    cfg = ModelConfig(
        arch=args.arch,
        vocab_size=256,
        n_embd=args.n_embd,
        n_head=args.n_head,
        n_block=args.n_block,
        block_inner_depth=args.inner_depth,
        history_window=args.history_window,
        generate_window=args.generate_window,
        ffn_hidden=args.ffn_hidden,
    )
    model = build_model(cfg, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())

    # Weight decay on matrices only (not on LayerNorm parameters or biases).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    step, elapsed_before = 0, 0.0
    history = []

    if args.resume and os.path.exists(args.out):
        ck = torch.load(args.out, map_location="cpu")
        if ck["config"] != cfg.to_dict():
            raise SystemExit("train.py: --resume: checkpoint config differs from the arguments")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        data_gen.set_state(ck["data_rng"])
        step, elapsed_before, history = ck["step"], ck["wall_s"], ck.get("history", [])
        log(f"resumed from {args.out} at step {step}")

    log(f"arch={cfg.arch} params={n_params} config={json.dumps(cfg.to_dict())}")
    log(f"train={len(train)} bytes val={len(val)} bytes seq_len={args.seq_len} batch={args.batch} "
        f"steps={args.steps} lr={args.lr} seed={args.seed} threads={args.threads}")

    def save(val_bpb=None, final=False):
        ck = {
            "format": "tconst-train-1",
            "config": cfg.to_dict(),
            "tokenizer": "bytes",
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "data_rng": data_gen.get_state(),
            "step": step,
            "wall_s": elapsed_before + (time.time() - t0),
            "args": vars(args),
            "history": history,
            "val_bpb": val_bpb,
            "final": final,
        }
        tmp = args.out + ".tmp"
        torch.save(ck, tmp)
        os.replace(tmp, args.out)

    t0 = time.time()
    model.train()
    loss_acc, loss_n = 0.0, 0
    while step < args.steps:
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), generator=data_gen)
        x = torch.stack([train[s : s + args.seq_len + 1] for s in starts.tolist()])
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        loss_acc += loss.item()
        loss_n += 1

        wall = elapsed_before + time.time() - t0
        if step % args.log_every == 0 or step == args.steps:
            train_bpb = loss_acc / loss_n / LN2
            tok_s = step * args.batch * args.seq_len / max(wall, 1e-9)
            log(f"step {step:5d} wall {wall:8.1f}s lr {lr:.2e} train_loss {loss_acc / loss_n:.4f} "
                f"({train_bpb:.3f} bpb) {tok_s:.0f} tok/s")
            history.append({"step": step, "wall_s": round(wall, 1), "train_loss": loss_acc / loss_n})
            loss_acc, loss_n = 0.0, 0
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            bpb = evaluate(model, val, eval_len, args.batch, args.eval_bytes)
            log(f"eval step {step:5d} wall {elapsed_before + time.time() - t0:8.1f}s "
                f"val_bpb(first {args.eval_bytes} bytes) {bpb:.4f}")
            history.append({"step": step, "val_bpb_subset": bpb})
            save(bpb)

    train_wall = elapsed_before + time.time() - t0
    bpb_sub = evaluate(model, val, eval_len, args.batch, args.eval_bytes)
    t_eval = time.time()
    bpb = evaluate(model, val, eval_len, args.batch, args.final_eval_bytes)
    eval_s = time.time() - t_eval
    history.append({"step": step, "val_bpb_subset": bpb_sub, "val_bpb": bpb})
    log(f"final step {step} train_wall {train_wall:.1f}s val_bpb(first {args.eval_bytes} bytes) {bpb_sub:.4f} "
        f"val_bpb(full, {eval_s:.0f}s) {bpb:.4f}")
    save(bpb, final=True)
    summary = {
        "arch": cfg.arch,
        "params": n_params,
        "config": cfg.to_dict(),
        "steps": step,
        "tokens": step * args.batch * args.seq_len,
        "train_wall_s": round(train_wall, 1),
        "val_bpb": bpb,
        "val_bpb_subset": bpb_sub,
        "eval_len": eval_len,
        "args": vars(args),
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
