#!/usr/bin/python3
"""What the Python bindings cost over the same work in C++ (docs/benchmarks.md).

On the paper-41m preset (random weights, as `tconst bench --preset paper-41m`):
  feed   N tokens one by one through Session.feed, against the same N feeds in a C++ loop
         (tconst._bench.feeds) on a second session that has seen the same tokens;
  score  4,096 tokens through Session.score (numpy [4096, V] back), against Session::score in C++
         keeping every row in one buffer (tconst._bench.score);
  call   the bindings' own cost of a feed, in microseconds (see bench_overhead);
  gil    two sessions of a threads=1 model on two Python threads, against one thread.
Python and C++ run in turns, so that a change in the machine's load hits both alike; the figures
are medians over the rounds.

  PYTHONPATH=build/python/module /usr/bin/python3 tools/bench_bindings.py [--threads 1]
      [--rounds 7] [--feeds 256] [--score-tokens 4096] [--arch tconstformer]
      [--skip feed,call,score,gil]
"""

import argparse
import statistics
import threading
import time

import tconst


def median_ratio(py, cpp):
    return statistics.median(p / c for p, c in zip(py, cpp))


def bench_feed(model, args):
    V = model.config["vocab_size"]
    ids = [(i * 7919) % V for i in range(args.feeds * (args.rounds + 1))]
    a, b = model.session(), model.session()
    py, cpp = [], []
    for r in range(args.rounds + 1):  # round 0 warms up
        chunk = ids[r * args.feeds:(r + 1) * args.feeds]
        t0 = time.perf_counter()
        for t in chunk:
            a.feed(t)
        tp = time.perf_counter() - t0
        tc = tconst._bench.feeds(b, chunk)
        if r > 0:
            py.append(tp / len(chunk))
            cpp.append(tc / len(chunk))
    print(f"feed   Python {statistics.median(py) * 1e3:8.3f} ms/token   C++ "
          f"{statistics.median(cpp) * 1e3:8.3f} ms/token   Python/C++ {median_ratio(py, cpp):.4f}"
          f"   (each {args.feeds} feeds, {args.rounds} rounds)")


def bench_overhead(model, args):
    """The bindings' own work in a feed, without the engine's step: Session.prefill([]) on a
    session that has consumed tokens checks its argument, allocates a numpy array of V, releases
    and takes back the GIL and copies the V logits, as feed does, and the engine returns at once.
    Session.position is a call that does nothing of the kind."""
    s = model.session()
    s.feed(1)

    def per_call(fn, n=2000):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    empty = []
    work = statistics.median(per_call(lambda: s.prefill(empty)) for _ in range(args.rounds))
    call = statistics.median(per_call(lambda: s.position) for _ in range(args.rounds))
    print(f"call   feed's own work (prefill([]) at V = {model.config['vocab_size']}): "
          f"{work * 1e6:.1f} us;   a call that does nothing (position): {call * 1e6:.2f} us   "
          f"({args.rounds} rounds of 2000)")


def bench_score(model, args):
    V = model.config["vocab_size"]
    ids = [(i * 104729) % V for i in range(args.score_tokens)]
    py, cpp = [], []
    for r in range(args.score_rounds + 1):
        s = model.session()
        t0 = time.perf_counter()
        rows = s.score(ids)
        tp = time.perf_counter() - t0
        del rows, s
        tc = tconst._bench.score(model.session(), ids)
        if r > 0:
            py.append(tp)
            cpp.append(tc)
    print(f"score  Python {statistics.median(py):8.3f} s   C++ {statistics.median(cpp):8.3f} s"
          f"   Python/C++ {median_ratio(py, cpp):.4f}   ({args.score_tokens} tokens, "
          f"{args.score_rounds} rounds: " + ", ".join(f"{p:.2f}/{c:.2f}" for p, c in zip(py, cpp))
          + " s)")


def bench_gil(args):
    model = tconst.Model.synthetic("paper-41m", architecture=args.arch, threads=1)
    V = model.config["vocab_size"]
    ids = [(i * 7919) % V for i in range(args.feeds)]

    def run(session):
        for t in ids:
            session.feed(t)

    run(model.session())
    ones, twos, cores = [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        run(model.session())
        ones.append(len(ids) / (time.perf_counter() - t0))
        threads = [threading.Thread(target=run, args=(model.session(),)) for _ in range(2)]
        t0, c0 = time.perf_counter(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        twos.append(2 * len(ids) / wall)
        # Cores busy at once: at most about 1 if the GIL serialised the two threads' steps.
        cores.append((time.process_time() - c0) / wall)
    print(f"gil    one thread {statistics.median(ones):7.1f} tok/s   two threads "
          f"{statistics.median(twos):7.1f} tok/s   speedup {median_ratio(twos, ones):.2f}x   "
          f"CPU time / wall time with two threads {statistics.median(cores):.2f}   "
          f"(threads=1 each, {args.feeds} feeds, {args.rounds} rounds)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--feeds", type=int, default=256)
    p.add_argument("--score-tokens", type=int, default=4096)
    p.add_argument("--score-rounds", type=int, default=3)
    p.add_argument("--arch", default="tconstformer")
    p.add_argument("--skip", default="", help="comma-separated: feed, call, score, gil")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"tconst {tconst.__version__}, kernels {tconst.vector_kernels()}, paper-41m {args.arch}, "
          f"threads={args.threads}")
    model = tconst.Model.synthetic("paper-41m", architecture=args.arch, threads=args.threads)
    if "feed" not in skip:
        bench_feed(model, args)
    if "call" not in skip:
        bench_overhead(model, args)
    if "score" not in skip:
        bench_score(model, args)
    if "gil" not in skip:
        bench_gil(args)


if __name__ == "__main__":
    main()
