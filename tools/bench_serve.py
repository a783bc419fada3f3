#!/usr/bin/env python3
"""Load generator for `tconst serve` (Python standard library only).

Starts the server itself (so that it can read the server's memory from /proc), by default on the
paper's 41M shape with synthetic weights (`--preset paper-41m`), and runs:

  streams   C concurrent streaming clients (C from --clients), each on its own session, each
            generating --tokens tokens after a prompt of token ids. Reports total tokens/s,
            per-client inter-token latency p50/p99 over all gaps, p99 over the gaps of streams that
            were not resyncing (a gap is a resync gap when the token fed in it was at a position
            p > 0 with p mod W = 0), the largest gap, and the server's resident bytes. With
            --stagger the prompts' lengths differ so that the streams' resyncs fall on different
            steps; without, every stream resyncs on the same step. With --park-beside N a
            parker creates N more sessions meanwhile and feeds each --park-feed tokens, with a
            resident budget that holds only the streams' sessions and two more, so the parker's
            sessions are parked as it goes; the calm gaps that end while it runs are reported
            apart (p50, p99 and their ratio).
  park      --sessions N sessions, each fed --feed tokens (a prompt of ids, no generation), with a
            resident budget of --budget-sessions sessions: the rest are parked to --session-dir;
            then each is restored (one generated token). Reports the server's peak RSS against the
            budget, and the park and restore rates.

Example (the figures in docs/benchmarks.md):
  tools/bench_serve.py --bin build/examples/tconst --threads 2 streams --clients 1,8,32,128
  tools/bench_serve.py --bin build/examples/tconst --threads 2 park --sessions 1000 --feed 1000
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time



def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(q / 100.0 * (len(xs) - 1)))))
    return xs[k]


class Server:
    def __init__(self, binary, threads, extra):
        args = [binary, "serve", "--port", "0", "--threads", str(threads), "--quiet"] + extra
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r":(\d+)$", line.strip())
        if not m:
            raise SystemExit("server did not start: " + line)
        self.port = int(m.group(1))

    def request(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
        c.request(method, path, body=json.dumps(body) if body is not None else None)
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:200]}")
        return json.loads(data) if data[:1] in (b"{", b"[") else data.decode()

    def metrics(self):
        out = {}
        for line in self.request("GET", "/metrics").splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def rss(self):
        """(VmRSS, VmHWM) in bytes; zeros once the server has exited."""
        vals = {"VmRSS": 0, "VmHWM": 0}
        if self.proc.poll() is not None:
            return 0, 0
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        k, v = line.split(":")
                        vals[k] = int(v.split()[0]) * 1024
        except OSError:
            return 0, 0
        return vals["VmRSS"], vals["VmHWM"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=600)


def stream_client(server, sid, prompt, tokens, seed, out, barrier, errors):
    try:
        stream_one(server, sid, prompt, tokens, seed, out, barrier)
    except Exception as e:  # noqa: BLE001 - counted and shown in the report
        errors.append(repr(e))


def stream_one(server, sid, prompt, tokens, seed, out, barrier):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=3600)
    body = {"prompt": prompt, "max_tokens": tokens, "stream": True, "seed": seed,
            "temperature": 0.8, "top_k": 40}
    barrier.wait()
    c.request("POST", f"/v1/sessions/{sid}/completions", body=json.dumps(body))
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]}")
    times = []
    for raw in r:
        line = raw.strip()
        if line == b"data: [DONE]":
            break
        if line.startswith(b"data: ") and b'"token_ids":[' in line and b'"token_ids":[]' not in line:
            times.append(time.perf_counter())
    c.close()
    out.append((len(prompt), times))


def parker(server, n, feed, barrier, window):
    barrier.wait()
    window.append(time.perf_counter())
    for i in range(n):
        sid = server.request("POST", "/v1/sessions")["id"]
        prompt = [(i * 29 + 5 * k) % 200 + 1 for k in range(feed)]
        server.request("POST", f"/v1/sessions/{sid}/completions",
                       {"prompt": prompt, "max_tokens": 0})
    window.append(time.perf_counter())


def run_streams(args):
    for clients in [int(x) for x in args.clients.split(",")]:
        extra = ["--max-active", str(max(clients, 1) + 1), "--max-queue", "16"]
        sdir = None
        if args.park_beside:
            probe = Server(args.bin, args.threads, args.server_args)
            one = probe.request("GET", "/v1/sessions/" +
                                probe.request("POST", "/v1/sessions")["id"])["resident_bytes"]
            probe.stop()
            longest = 32 + args.period + args.tokens + args.period
            budget = (clients + 2) * (one + 4 * max(longest, args.park_feed))
            sdir = tempfile.mkdtemp(prefix="tconst-bench-serve-")
            extra += ["--session-dir", sdir, "--max-resident-bytes", str(budget)]
        server = Server(args.bin, args.threads, args.server_args + extra)
        try:
            sids = [server.request("POST", "/v1/sessions")["id"] for _ in range(clients)]
            prompts = []
            for i in range(clients):
                # Aligned: every prompt is 32 tokens, so every stream resyncs on the same step.
                # Staggered: lengths spread over one period, so resyncs fall on different steps.
                n = 32 + ((i * args.period) // clients if args.stagger else 0)
                prompts.append([(17 * i + 3 * k) % 200 + 1 for k in range(n)])
            out, threads, errors, window = [], [], [], []
            barrier = threading.Barrier(clients + 1 + (1 if args.park_beside else 0))
            if args.park_beside:
                t = threading.Thread(target=parker, args=(server, args.park_beside,
                                                          args.park_feed, barrier, window))
                t.start()
                threads.append(t)
            for i, sid in enumerate(sids):
                t = threading.Thread(target=stream_client,
                                     args=(server, sid, prompts[i], args.tokens, i, out, barrier,
                                           errors))
                t.start()
                threads.append(t)
            barrier.wait()
            for t in threads:
                t.join()
            report_streams(server, clients, out, args, errors, window)
        finally:
            server.stop()
            if sdir:
                shutil.rmtree(sdir, ignore_errors=True)


def step_quantile(m, q):
    """The upper bound of the joint-step histogram's bucket that holds quantile q (seconds)."""
    buckets = sorted((float(k.split('"')[1]), v) for k, v in m.items()
                     if k.startswith("tconst_step_seconds_bucket") and "+Inf" not in k)
    total = m.get("tconst_step_seconds_count", 0)
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def report_streams(server, clients, out, args, errors, window):
    gaps, calm, resync_gaps, calm_parking = [], [], [], []
    first = min(times[0] for _, times in out)
    last = max(times[-1] for _, times in out)
    total = sum(len(times) for _, times in out)
    for plen, times in out:
        for j in range(1, len(times)):
            gap = times[j] - times[j - 1]
            gaps.append(gap)
            # Token j was sampled after token j-1 was fed at position plen + j - 1.
            if (plen + j - 1) % args.period == 0:
                resync_gaps.append(gap)
            else:
                calm.append(gap)
                if window and window[0] <= times[j] <= window[1]:
                    calm_parking.append(gap)
    m = server.metrics()
    parking = {}
    if window:
        p50, p99 = percentile(calm_parking, 50), percentile(calm_parking, 99)
        parking = {
            "parker_sessions": args.park_beside, "parker_seconds": round(window[1] - window[0], 2),
            "parks": int(m["tconst_session_parks_total"]),
            "calm_gaps_while_parking": len(calm_parking),
            "calm_while_parking_p50_ms": round(1e3 * p50, 2),
            "calm_while_parking_p99_ms": round(1e3 * p99, 2),
            "calm_while_parking_p99_over_p50": round(p99 / p50, 2) if p50 > 0 else None,
        }
    rss, hwm = server.rss()
    # Tokens/s over the part where every client streams (after the first token of each).
    print(json.dumps({
        "clients": clients, "stagger": args.stagger, "tokens_per_client": args.tokens,
        "total_tokens": total, "failed_clients": len(errors), "errors": errors[:3],
        "seconds": round(last - first, 3),
        "tokens_per_s": round(total / (last - first), 1),
        "gap_p50_ms": round(1e3 * percentile(gaps, 50), 2),
        "gap_p99_ms": round(1e3 * percentile(gaps, 99), 2),
        "calm_gap_p50_ms": round(1e3 * percentile(calm, 50), 2),
        "calm_gap_p99_ms": round(1e3 * percentile(calm, 99), 2),
        "resync_gap_median_ms": round(1e3 * statistics.median(resync_gaps), 2)
        if resync_gaps else None,
        "max_gap_ms": round(1e3 * max(gaps), 2) if gaps else None,
        "joint_steps": int(m["tconst_step_seconds_count"]),
        "joint_step_mean_ms": round(1e3 * m["tconst_step_seconds_sum"] /
                                    max(1, m["tconst_step_seconds_count"]), 2),
        "joint_step_p50_p99_bucket_ms": [1e3 * step_quantile(m, 0.5), 1e3 * step_quantile(m, 0.99)],
        "resyncs": int(m["tconst_resyncs_total"]),
        "resident_cache_bytes": int(m["tconst_resident_cache_bytes"]),
        "rss_bytes": rss, "peak_rss_bytes": hwm, **parking,
    }), flush=True)


def run_park(args):
    sdir = args.session_dir or tempfile.mkdtemp(prefix="tconst-bench-serve-")
    probe = Server(args.bin, args.threads, args.server_args)
    sid = probe.request("POST", "/v1/sessions")["id"]
    one = probe.request("GET", f"/v1/sessions/{sid}")["resident_bytes"]
    base_rss = probe.rss()[0]
    probe.stop()
    shutil.rmtree(sdir, ignore_errors=True)
    os.makedirs(sdir)
    # Room for the sessions kept resident, each with its --feed-token log (4 bytes a token).
    budget = args.budget_sessions * (one + 4 * (args.feed + args.period))
    server = Server(args.bin, args.threads, args.server_args + [
        "--session-dir", sdir, "--max-resident-bytes", str(budget), "--max-active", "4"])
    try:
        peak = [0]
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], server.rss()[0])
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.perf_counter()
        sids = []
        for i in range(args.sessions):
            sid = server.request("POST", "/v1/sessions")["id"]
            prompt = [(i * 31 + 7 * k) % 200 + 1 for k in range(args.feed)]
            server.request("POST", f"/v1/sessions/{sid}/completions",
                           {"prompt": prompt, "max_tokens": 0})
            sids.append(sid)
            if (i + 1) % 100 == 0:
                print(f"# {i + 1} sessions fed, {time.perf_counter() - t0:.1f} s, "
                      f"peak RSS {peak[0]} bytes", flush=True)
        t1 = time.perf_counter()
        for sid in sids:
            r = server.request("POST", f"/v1/sessions/{sid}/completions",
                               {"max_tokens": 1, "temperature": 0})
            assert len(r["choices"][0]["token_ids"]) == 1
        t2 = time.perf_counter()
        done.set()
        watcher.join()
        m = server.metrics()
        disk = sum(os.path.getsize(os.path.join(sdir, f)) for f in os.listdir(sdir))
        print(json.dumps({
            "sessions": args.sessions, "tokens_each": args.feed,
            "session_bytes": one, "budget_bytes": budget,
            "budget_sessions": args.budget_sessions,
            "rss_idle_server_bytes": base_rss, "peak_rss_bytes": peak[0],
            "peak_rss_minus_idle_bytes": peak[0] - base_rss,
            "resident_cache_bytes_end": int(m["tconst_resident_cache_bytes"]),
            "parks": int(m["tconst_session_parks_total"]),
            "restores": int(m["tconst_session_restores_total"]),
            "feed_phase_s": round(t1 - t0, 1), "restore_phase_s": round(t2 - t1, 1),
            "restore_ms_each": round(1e3 * (t2 - t1) / args.sessions, 2),
            "snapshot_dir_bytes": disk,
        }), flush=True)
    finally:
        server.stop()
        if not args.session_dir:
            shutil.rmtree(sdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bin", default="build/examples/tconst")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--period", type=int, default=256, help="the model's resync period W")
    p.add_argument("--server-args", default="--preset paper-41m",
                   help="more flags for tconst serve (default: --preset paper-41m)")
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("streams")
    s.add_argument("--clients", default="1,8,32,128")
    s.add_argument("--tokens", type=int, default=300)
    s.add_argument("--stagger", action="store_true")
    s.add_argument("--park-beside", type=int, default=0,
                   help="sessions a parker creates and feeds meanwhile (they are parked)")
    s.add_argument("--park-feed", type=int, default=200, help="tokens fed to each of them")
    k = sub.add_parser("park")
    k.add_argument("--sessions", type=int, default=1000)
    k.add_argument("--feed", type=int, default=1000)
    k.add_argument("--budget-sessions", type=int, default=16)
    k.add_argument("--session-dir", default="")
    args = p.parse_args()
    args.server_args = args.server_args.split()
    run_streams(args) if args.mode == "streams" else run_park(args)


if __name__ == "__main__":
    main()
