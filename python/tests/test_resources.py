"""Long calls release the GIL, and the bindings do not leak: resident memory stays flat over
10,000 feeds and over 1,000 sessions made and dropped."""

import gc
import os
import threading
import time
import unittest

import tconst
from bindings_support import KJV_TCONST, kjv_ids, rss_bytes


class TestGil(unittest.TestCase):
    def test_python_runs_during_a_long_call(self):
        """While one thread is inside a long score(), another Python thread keeps running: the
        longest pause it sees is far shorter than the call (holding the GIL, it would see one
        pause as long as the call)."""
        model = tconst.Model(KJV_TCONST, threads=1)
        # A call of at least 0.3 s: the cost of score() grows faster than its length.
        n = 256
        while n < 65536:
            t0 = time.perf_counter()
            model.session().score(kjv_ids(n))
            if time.perf_counter() - t0 >= 0.3:
                break
            n *= 2
        ids = kjv_ids(n)
        s = model.session()
        span = {}

        def long_call():
            span["start"] = time.perf_counter()
            s.score(ids)
            span["end"] = time.perf_counter()

        stamps = []
        worker = threading.Thread(target=long_call)
        worker.start()
        while worker.is_alive():
            stamps.append(time.perf_counter())
        worker.join()
        start, end = span["start"], span["end"]
        inside = [start] + [t for t in stamps if start < t < end] + [end]
        longest_pause = max(b - a for a, b in zip(inside, inside[1:]))
        duration = end - start
        print(f"\n  score of {len(ids)} tokens took {duration:.3f} s; the other thread's longest "
              f"pause meanwhile: {longest_pause * 1e3:.1f} ms over {len(inside) - 2} steps")
        self.assertGreater(duration, 0.1)
        self.assertLess(longest_pause, duration / 2)

    @unittest.skipUnless(os.environ.get("TCONST_TIMING_TESTS") == "1",
                         "timing test: set TCONST_TIMING_TESTS=1 on an otherwise idle machine "
                         "with at least 2 cores")
    def test_two_threads_speedup(self):
        """Two sessions of a threads=1 model on two Python threads: at least 1.6x the tokens/s of
        one thread."""
        model = tconst.Model.synthetic("paper-41m", threads=1)
        ids = [i % 50257 for i in range(0, 64 * 997, 997)]

        def run(session):
            for t in ids:
                session.feed(t)

        run(model.session())  # warm-up
        t0 = time.perf_counter()
        run(model.session())
        one = time.perf_counter() - t0
        threads = [threading.Thread(target=run, args=(model.session(),)) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        two = time.perf_counter() - t0
        speedup = 2 * one / two
        print(f"\n  one thread {len(ids) / one:.1f} tok/s, two threads {2 * len(ids) / two:.1f} "
              f"tok/s: {speedup:.2f}x")
        self.assertGreaterEqual(speedup, 1.6)


class TestLeaks(unittest.TestCase):
    LIMIT = 2 << 20  # bytes of growth allowed (allocator noise); a leak here is 10+ MB

    def test_feeds(self):
        model = tconst.Model(KJV_TCONST, threads=1)
        s = model.session()
        ids = kjv_ids(11000)
        for t in ids[:1000]:
            s.feed(t)
        gc.collect()
        before = rss_bytes()
        for t in ids[1000:]:
            s.feed(t)  # each returns a new [256] array: 10 MB if they were never freed
        gc.collect()
        growth = rss_bytes() - before
        print(f"\n  RSS growth over 10,000 feeds: {growth / 1024:.0f} KiB")
        self.assertLess(growth, self.LIMIT)

    def test_sessions(self):
        model = tconst.Model(KJV_TCONST, threads=1)
        prompt = kjv_ids(10)

        def churn(n):
            for i in range(n):
                s = model.session()
                s.prefill(prompt)
                list(s.generate(max_new_tokens=3, seed=i))
                s.copy().feed(1)
                del s

        churn(100)
        gc.collect()
        before = rss_bytes()
        churn(1000)  # a session holds 0.9 MB of cache here: 900 MB if they were never freed
        gc.collect()
        growth = rss_bytes() - before
        print(f"\n  RSS growth over 1,000 sessions: {growth / 1024:.0f} KiB")
        self.assertLess(growth, self.LIMIT)


if __name__ == "__main__":
    unittest.main()
