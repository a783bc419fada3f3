"""What --durable costs a request of `tconst serve` (a measurement, not a test).

One named session, prefilled with 100 tokens, then --turns requests of one token each, timed from
the client; once without and once with --durable (which writes the session's snapshot, with fsync,
before each reply ends). Prints the median and p90 per configuration.

  python3 tests/python/bench_serve_durable.py --bin build/examples/tconst --server-args "--preset paper-41m --threads 2"
"""

import argparse
import http.client
import json
import os
import re
import shlex
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "examples", "tconst"))
    ap.add_argument("--server-args",
                    default="--model " + os.path.join(ROOT, "models", "kjv-tconst.safetensors"))
    ap.add_argument("--turns", type=int, default=40)
    args = ap.parse_args()
    for extra in ([], ["--durable"]):
        with tempfile.TemporaryDirectory() as sdir:
            proc = subprocess.Popen([args.bin, "serve", "--port", "0", "--quiet", "--session-dir",
                                     sdir] + shlex.split(args.server_args) + extra,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            port = int(re.search(r":(\d+)", proc.stdout.readline()).group(1))

            def post(path, body):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                c.request("POST", path, body=json.dumps(body) if body is not None else "")
                r = c.getresponse()
                out = json.loads(r.read())
                c.close()
                assert r.status in (200, 201), out
                return out

            sid = post("/v1/sessions", None)["id"]
            post(f"/v1/sessions/{sid}/completions", {"prompt": list(range(100)), "max_tokens": 1})
            times = []
            for i in range(args.turns):
                t0 = time.perf_counter()
                post(f"/v1/sessions/{sid}/completions", {"max_tokens": 1, "seed": i})
                times.append(time.perf_counter() - t0)
            proc.terminate()
            proc.wait()
        times.sort()
        print(json.dumps({"durable": bool(extra), "turns": len(times),
                          "median_ms": round(1e3 * statistics.median(times), 1),
                          "p90_ms": round(1e3 * times[int(0.9 * len(times))], 1)}))


if __name__ == "__main__":
    main()
