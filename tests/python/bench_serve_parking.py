"""What parking costs the other streams of `tconst serve` (a measurement, not a test).

S streaming clients hold named sessions and talk in turns (each turn a streamed completion of
--turn-tokens tokens). Meanwhile a parker creates --park sessions and feeds each a prompt, with a
resident budget of --budget-sessions sessions, so that the server parks the least recently used
idle sessions (the streams' among them, between their turns) and restores them on their next turn.
Reported: the streams' inter-token gap and time to first token of a turn (p50, p99), while the
parker runs; the number of parks and restores.

  python3 tests/python/bench_serve_parking.py --bin build/examples/tconst --streams 8 --park 100
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "kjv-tconst.safetensors")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def post(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", path, body=json.dumps(body) if body is not None else "")
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def stream_turn(port, sid, body, gaps, ttfts):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", f"/v1/sessions/{sid}/completions", body=json.dumps(dict(body, stream=True)))
    r = c.getresponse()
    assert r.status == 200, r.read()
    last = None
    for raw in r:
        if not raw.startswith(b"data: {") or b'"token_ids":[]' in raw:
            continue
        now = time.perf_counter()
        if last is None:
            ttfts.append(now - t0)
        else:
            gaps.append(now - last)
        last = now
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "examples", "tconst"))
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--turn-tokens", type=int, default=16)
    ap.add_argument("--park", type=int, default=100)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--budget-sessions", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    # A session's resident bytes: its cache plus (from the server) its buffers; the budget is
    # measured from a first session below.
    proc = subprocess.Popen([args.bin, "serve", "--model", args.model, "--port", "0", "--quiet",
                             "--threads", str(args.threads), "--session-dir", tmp.name,
                             "--max-resident-bytes", str(10 ** 12)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = int(re.search(r":(\d+)", proc.stdout.readline()).group(1))
    _, first = post(port, "/v1/sessions", None)
    per = first["resident_bytes"] + 4 * (args.prompt_tokens + 64 * 4)
    proc.terminate()
    proc.wait()

    proc = subprocess.Popen([args.bin, "serve", "--model", args.model, "--port", "0", "--quiet",
                             "--threads", str(args.threads), "--session-dir", tmp.name,
                             "--max-resident-bytes", str(per * args.budget_sessions)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = int(re.search(r":(\d+)", proc.stdout.readline()).group(1))
    gaps, ttfts = [], []
    stop = threading.Event()

    def streamer(k):
        _, s = post(port, "/v1/sessions", None)
        body = {"prompt": "And God said", "max_tokens": args.turn_tokens, "seed": k,
                "temperature": 0.8}
        stream_turn(port, s["id"], body, [], [])  # warm: the prompt's prefill is not measured
        body.pop("prompt")
        while not stop.is_set():
            stream_turn(port, s["id"], body, gaps, ttfts)

    threads = [threading.Thread(target=streamer, args=(k,)) for k in range(args.streams)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    gaps.clear()
    ttfts.clear()
    prompt = list(range(32, 32 + 90)) * (args.prompt_tokens // 90 + 1)
    t0 = time.perf_counter()
    for _ in range(args.park):
        _, s = post(port, "/v1/sessions", None)
        status, _ = post(port, f"/v1/sessions/{s['id']}/completions",
                         {"prompt": prompt[:args.prompt_tokens], "max_tokens": 1})
        assert status == 200
    seconds = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/metrics")
    metrics = {ln.split()[0]: float(ln.split()[1]) for ln in c.getresponse().read().decode()
               .splitlines() if ln and not ln.startswith("#")}
    proc.terminate()
    proc.wait()
    print(json.dumps({
        "streams": args.streams, "parked_sessions_created": args.park,
        "budget_sessions": args.budget_sessions, "seconds": round(seconds, 2),
        "parks": int(metrics["tconst_session_parks_total"]),
        "restores": int(metrics["tconst_session_restores_total"]),
        "gap_ms_p50": round(1e3 * percentile(gaps, 0.5), 2),
        "gap_ms_p99": round(1e3 * percentile(gaps, 0.99), 2),
        "ttft_ms_p50": round(1e3 * percentile(ttfts, 0.5), 2),
        "ttft_ms_p99": round(1e3 * percentile(ttfts, 0.99), 2),
        "gaps": len(gaps), "turns": len(ttfts),
    }))
    tmp.cleanup()


if __name__ == "__main__":
    main()
