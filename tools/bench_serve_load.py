#!/usr/bin/env python3
"""Many clients at once against `tconst serve` (Python standard library only).

Starts the server (the bundled model by default) with --max-active and --max-queue, then opens
--clients connections at the same moment; each sends one streamed /v1/completions request of
--tokens tokens. Every client must get either a whole answer (its tokens, a finish_reason and
[DONE]) or a 503 with Retry-After; anything else (a reset connection, another status, a stream
cut short, no answer within --timeout) is a failure, and the exit status is 1.

Reported: how many were answered and how many refused, the time to first token (from the request
being sent) and the inter-token gap of the answered ones (p50, p99), the refusals' time to the
503, and the wall time.

  tools/bench_serve_load.py --bin build/examples/tconst --clients 512 --max-active 64 \\
      --max-queue 256 --tokens 32
"""

import argparse
import http.client
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "kjv-tconst.safetensors")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def client(port, body, start, out, timeout):
    rec = {"kind": "failed", "why": "", "ttft": None, "gaps": []}
    out.append(rec)
    start.wait()
    t0 = time.perf_counter()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status == 503:
            r.read()
            rec["refused_s"] = time.perf_counter() - t0
            if r.getheader("Retry-After"):
                rec["kind"] = "refused"
            else:
                rec["why"] = "503 without Retry-After"
            c.close()
            return
        if r.status != 200:
            rec["why"] = f"status {r.status}: {r.read()[:200]!r}"
            c.close()
            return
        last, tokens, finish, done = None, 0, None, False
        for raw in r:
            if not raw.startswith(b"data: "):
                continue
            data = raw[6:].strip()
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                rec["why"] = f"error event: {ev['error']}"
                break
            ch = ev["choices"][0]
            finish = ch.get("finish_reason") or finish
            if not ch["token_ids"]:
                continue
            now = time.perf_counter()
            if last is None:
                rec["ttft"] = now - t0
            else:
                rec["gaps"].append(now - last)
            last = now
            tokens += len(ch["token_ids"])
        c.close()
        if done and finish == "length" and tokens == body["max_tokens"]:
            rec["kind"] = "answered"
        elif not rec["why"]:
            rec["why"] = f"stream cut short: {tokens} tokens, finish {finish}, [DONE] {done}"
    except (OSError, http.client.HTTPException) as e:
        rec["why"] = f"{type(e).__name__}: {e}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "examples", "tconst"))
    p.add_argument("--model", default=MODEL)
    p.add_argument("--clients", type=int, default=512)
    p.add_argument("--max-active", type=int, default=64)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--server-args", default="")
    args = p.parse_args()

    # One descriptor per client here, and as many in the server: raise the soft limits.
    want = 4 * args.clients + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    threading.stack_size(256 * 1024)

    cmd = [args.bin, "serve", "--model", args.model, "--port", "0", "--quiet",
           "--threads", str(args.threads), "--max-active", str(args.max_active),
           "--max-queue", str(args.max_queue)] + args.server_args.split()
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    m = re.search(r":(\d+)", server.stdout.readline())
    if not m:
        server.kill()
        sys.exit("server did not start: " + server.stderr.read())
    port = int(m.group(1))
    try:
        body = {"prompt": "In the beginning God created", "max_tokens": args.tokens,
                "temperature": 0.8, "top_k": 40, "seed": 1, "stream": True}
        start = threading.Event()
        out = []
        threads = [threading.Thread(target=client, args=(port, body, start, out, args.timeout))
                   for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # every thread is waiting on the event
        t0 = time.perf_counter()
        start.set()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=60)

    answered = [r for r in out if r["kind"] == "answered"]
    refused = [r for r in out if r["kind"] == "refused"]
    failed = [r for r in out if r["kind"] == "failed"]
    ttft = [r["ttft"] for r in answered]
    gaps = [g for r in answered for g in r["gaps"]]
    ms = lambda x: f"{1e3 * x:.1f}"  # noqa: E731
    print(f"clients {args.clients}, --max-active {args.max_active} --max-queue {args.max_queue}, "
          f"{args.tokens} tokens each, --threads {args.threads}: wall {wall:.1f} s")
    print(f"answered {len(answered)}, refused with 503 + Retry-After {len(refused)}, "
          f"failed {len(failed)}")
    print(f"time to first token p50 / p99: {ms(percentile(ttft, 0.5))} / "
          f"{ms(percentile(ttft, 0.99))} ms")
    print(f"inter-token gap p50 / p99: {ms(percentile(gaps, 0.5))} / "
          f"{ms(percentile(gaps, 0.99))} ms")
    if refused:
        rs = [r["refused_s"] for r in refused]
        print(f"503 after p50 / p99: {ms(percentile(rs, 0.5))} / {ms(percentile(rs, 0.99))} ms")
    for r in failed[:10]:
        print("failed:", r["why"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
