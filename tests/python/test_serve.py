"""`tconst serve` over real loopback HTTP, with the bundled model.

Each test starts the server (build/examples/tconst, or $TCONST_BIN) on 127.0.0.1 with --port 0
and talks to it with Python's own HTTP client. What a client gets must equal what
`tconst generate` gives for the same prompt and seed; sessions continue, park, restore and survive
a restart exactly; bad input gets its status and the server keeps serving.

Run from the repository root:
  TCONST_BIN=$PWD/build/examples/tconst python3 -m unittest tests/python/test_serve.py -v
"""

import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TCONST_BIN = os.environ.get("TCONST_BIN", os.path.join(ROOT, "build", "examples", "tconst"))
MODEL = os.path.join(ROOT, "models", "kjv-tconst.safetensors")


def have_serve():
    if not (os.path.isfile(TCONST_BIN) and os.access(TCONST_BIN, os.X_OK)):
        return False
    out = subprocess.run([TCONST_BIN, "--help"], capture_output=True, text=True).stdout
    return "serve" in out


HAVE_SERVE = have_serve()
SKIP_MSG = f"{TCONST_BIN} missing or built without `serve` (needs cpp-httplib)"

# The kjv model: W = 64 (a resync every 64 tokens), a bytes tokenizer.
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.02, "repeat_penalty": 1.1}
PROMPT = "In the beginning God created"


class Server:
    """A running `tconst serve`; stop() sends SIGTERM and waits."""

    def __init__(self, *extra, preexec_fn=None, model=MODEL):
        args = [TCONST_BIN, "serve", "--model", model, "--port", "0", "--threads", "1", "--quiet"]
        self.proc = subprocess.Popen(args + [str(a) for a in extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("server did not start: " + line + self.proc.stderr.read())
        self.port = int(m.group(1))
        self.stderr = ""

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, raw=None, headers=None):
        c = self.conn()
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        c.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read().decode()
        c.close()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        return r.status, payload, r

    def complete(self, body, session=None):
        path = f"/v1/sessions/{session}/completions" if session else "/v1/completions"
        status, payload, _ = self.request("POST", path, body)
        assert status == 200, (status, payload)
        return payload

    def stream(self, body, session=None):
        """The events of a streamed completion: (token ids, text, final event)."""
        path = f"/v1/sessions/{session}/completions" if session else "/v1/completions"
        c = self.conn()
        c.request("POST", path, body=json.dumps(dict(body, stream=True)))
        r = c.getresponse()
        assert r.status == 200, (r.status, r.read())
        assert r.getheader("Content-Type").startswith("text/event-stream")
        ids, text, events = [], "", []
        for raw in r:
            line = raw.decode("utf-8").rstrip("\n")  # each event's text is whole characters
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            events.append(json.loads(data))
            ch = events[-1]["choices"][0] if "choices" in events[-1] else None
            if ch is not None:
                ids += ch["token_ids"]
                text += ch["text"]
        c.close()
        return ids, text, events[-1]

    def new_session(self):
        status, payload, _ = self.request("POST", "/v1/sessions")
        assert status == 201, (status, payload)
        return payload["id"]

    def metrics(self):
        _, text, _ = self.request("GET", "/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.stderr = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()
        return self.proc.returncode


def generate_ids(prompt, max_new, seed, sampling=SAMPLING, model=MODEL, compute="f32"):
    """What `tconst generate` gives (the reference for the server)."""
    args = [TCONST_BIN, "generate", "--model", model, "--prompt", prompt, "--max-new",
            str(max_new), "--seed", str(seed), "--print-ids", "--quiet", "--threads", "1",
            "--compute", compute]
    flags = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
             "min_p": "--min-p", "repeat_penalty": "--repeat-penalty"}
    for k, v in sampling.items():
        args += [flags[k], str(v)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [int(x) for x in out.split()]


def text_ids(text):
    return list(text.encode("utf-8"))  # the bytes tokenizer


@unittest.skipUnless(HAVE_SERVE, SKIP_MSG)
class TestServe(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            if s.proc.poll() is None:
                s.stop()
        self.tmp.cleanup()

    def start(self, *extra, **kw):
        s = Server(*extra, **kw)
        self.servers.append(s)
        return s

    def session_dir(self, name="sessions"):
        path = os.path.join(self.dir, name)
        os.makedirs(path, exist_ok=True)
        return path

    # ---- equal to tconst generate --------------------------------------------------------------

    def test_streamed_equals_generate_and_whole_reply(self):
        s = self.start()
        # 90 tokens after a 28-byte prompt cross the resync at position 64.
        body = dict(SAMPLING, prompt=PROMPT, max_tokens=90, seed=11)
        ids, text, last = s.stream(body)
        self.assertEqual(ids, generate_ids(PROMPT, 90, 11))
        self.assertEqual(last["choices"][0]["finish_reason"], "length")
        self.assertEqual(last["usage"]["completion_tokens"], 90)
        self.assertEqual(last["usage"]["prompt_tokens"], len(PROMPT))
        self.assertEqual(text, bytes(ids).decode("utf-8", errors="replace"))
        whole = s.complete(body)
        self.assertEqual(whole["choices"][0]["token_ids"], ids)
        self.assertEqual(whole["choices"][0]["text"], text)
        self.assertEqual(whole["usage"]["total_tokens"], len(PROMPT) + 90)
        # Greedy, and a prompt given as token ids.
        greedy = s.complete({"prompt": text_ids(PROMPT), "max_tokens": 30, "temperature": 0})
        self.assertEqual(greedy["choices"][0]["token_ids"],
                         generate_ids(PROMPT, 30, 0, {"temperature": 0}))

    def test_compute_modes_equal_generate_of_the_same_compute(self):
        # --compute (SPEC 6.3) applies to every session the server makes, named or not: the same
        # tokens as `tconst generate --compute`, and the prompt's log-probabilities move.
        def prompt_logprobs(server):
            reply = server.complete({"prompt": PROMPT, "max_tokens": 0, "echo": True,
                                     "logprobs": 1})
            return reply["choices"][0]["logprobs"]["token_logprobs"][1:]
        f32 = prompt_logprobs(self.start())
        for compute in ("bf16", "int8"):
            s = self.start("--compute", compute, "--session-dir", self.session_dir(compute))
            body = dict(SAMPLING, prompt=PROMPT, max_tokens=70, seed=5)
            want = generate_ids(PROMPT, 70, 5, compute=compute)
            self.assertEqual(s.complete(body)["choices"][0]["token_ids"], want, compute)
            sid = s.new_session()
            self.assertEqual(s.complete(body, session=sid)["choices"][0]["token_ids"], want)
            got = prompt_logprobs(s)
            self.assertEqual(len(got), len(f32))
            self.assertNotEqual(got, f32, compute)
            self.assertLess(max(abs(a - b) for a, b in zip(got, f32)), 0.5, compute)

    def test_stop_string_ends_with_the_matching_token(self):
        s = self.start()
        body = dict(SAMPLING, prompt=PROMPT, max_tokens=200, seed=3)
        full = s.complete(body)["choices"][0]["text"]
        stop = full[5:7]
        got = s.complete(dict(body, stop=[stop]))["choices"][0]
        self.assertEqual(got["finish_reason"], "stop")
        self.assertTrue(got["text"].endswith(stop) and full.startswith(got["text"]), got)
        self.assertEqual(got["text"].find(stop), len(got["text"]) - len(stop))

    # ---- sessions ------------------------------------------------------------------------------

    def test_session_continues_without_reprefill(self):
        s = self.start()
        greedy = {"temperature": 0, "repeat_penalty": 1.3}
        sid = s.new_session()
        parts = [s.stream(dict(greedy, prompt=PROMPT, max_tokens=25), session=sid)[0]]
        parts += [s.stream(dict(greedy, max_tokens=25), session=sid)[0] for _ in range(2)]
        one = s.complete(dict(greedy, prompt=PROMPT, max_tokens=75))["choices"][0]["token_ids"]
        self.assertEqual(sum(parts, []), one)
        _, info, _ = s.request("GET", f"/v1/sessions/{sid}")
        self.assertEqual(info["position"], len(PROMPT) + 75)
        self.assertEqual(info["state"], "resident")
        self.assertGreater(info["cache_bytes"], 0)
        # A new prompt appended to the history: the same as a fresh stream over all of it.
        more = " and the earth"
        got = s.complete(dict(SAMPLING, prompt=more, max_tokens=40, seed=5), session=sid)
        history = text_ids(PROMPT) + one + text_ids(more)
        want = s.complete(dict(SAMPLING, prompt=history, max_tokens=40, seed=5))
        self.assertEqual(got["choices"][0]["token_ids"], want["choices"][0]["token_ids"])
        self.assertEqual(got["usage"]["prompt_tokens"], len(more))
        status, _, _ = s.request("DELETE", f"/v1/sessions/{sid}")
        self.assertEqual(status, 200)
        self.assertEqual(s.request("GET", f"/v1/sessions/{sid}")[0], 404)

    def run_sessions(self, s, sids, seed0):
        return [s.complete(dict(SAMPLING, prompt=PROMPT, max_tokens=70, seed=seed0 + i),
                           session=sid)["choices"][0]["token_ids"] for i, sid in enumerate(sids)]

    def test_parked_session_restores_exactly_and_survives_restart(self):
        sdir = self.session_dir()
        s = self.start("--session-dir", sdir, "--max-resident-bytes", 1)
        sids = [s.new_session() for _ in range(3)]
        first = self.run_sessions(s, sids, 20)
        m = s.metrics()
        self.assertGreaterEqual(m["tconst_session_parks_total"], 3)
        self.assertEqual(m["tconst_sessions_resident"], 0)  # every idle one parked at once
        self.assertEqual(s.request("GET", f"/v1/sessions/{sids[0]}")[1]["state"], "parked")
        cont = [s.complete(dict(SAMPLING, max_tokens=30, seed=9), session=sid)["choices"][0]
                ["token_ids"] for sid in sids]
        self.assertGreaterEqual(s.metrics()["tconst_session_restores_total"], 3)
        # The same on a server that never parks.
        ref = self.start()
        rsids = [ref.new_session() for _ in range(3)]
        self.assertEqual(self.run_sessions(ref, rsids, 20), first)
        want = [ref.complete(dict(SAMPLING, max_tokens=30, seed=9), session=sid)["choices"][0]
                ["token_ids"] for sid in rsids]
        self.assertEqual(cont, want)
        # A restart keeps them: parked at shutdown, found at start.
        self.assertEqual(s.stop(), 0)
        s2 = self.start("--session-dir", sdir)
        for sid in sids:
            info = s2.request("GET", f"/v1/sessions/{sid}")[1]
            self.assertEqual((info["state"], info["position"]), ("parked", len(PROMPT) + 100))
        again = s2.complete(dict(SAMPLING, max_tokens=20, seed=4), session=sids[1])
        want = ref.complete(dict(SAMPLING, max_tokens=20, seed=4), session=rsids[1])
        self.assertEqual(again["choices"][0]["token_ids"], want["choices"][0]["token_ids"])

    def test_concurrent_turns_while_sessions_park_and_restore(self):
        # 8 conversations of 4 turns, all at once, with room for 2 resident sessions: parks and
        # restores run while other requests acquire and release. Each conversation must end with
        # the tokens of the same turns on a server that never parks.
        def conversations(server, turns=4):
            sids = [server.new_session() for _ in range(8)]
            out = [None] * 8

            def talk(k):
                ids = []
                for t in range(turns):
                    body = dict(SAMPLING, max_tokens=12, seed=100 * k + t)
                    if t == 0:
                        body["prompt"] = PROMPT + " " * k
                    ids += server.complete(body, session=sids[k])["choices"][0]["token_ids"]
                out[k] = ids

            threads = [threading.Thread(target=talk, args=(k,)) for k in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            return out

        per = None
        probe = self.start()
        per = probe.request("GET", f"/v1/sessions/{probe.new_session()}")[1]["resident_bytes"]
        want = conversations(probe)
        probe.stop()
        s = self.start("--session-dir", self.session_dir(), "--max-resident-bytes",
                       2 * per + 4096)
        got = conversations(s)
        self.assertEqual(got, want)
        m = s.metrics()
        self.assertGreater(m["tconst_session_parks_total"], 8)
        self.assertGreater(m["tconst_session_restores_total"], 8)
        self.assertEqual(m["tconst_snapshot_write_failures_total"], 0)
        self.assertEqual(m["tconst_snapshot_restore_failures_total"], 0)
        self.assertLessEqual(m["tconst_resident_cache_bytes"], 2 * per + 4096)

    def test_durable_sessions_survive_sigkill(self):
        # With --durable every completed turn is on disk when its reply ends: a SIGKILL loses none.
        sdir = self.session_dir()
        s = self.start("--session-dir", sdir, "--durable")
        sids = [s.new_session() for _ in range(3)]
        self.run_sessions(s, sids, 20)
        for sid in sids:  # and a streamed turn each
            s.stream(dict(SAMPLING, max_tokens=10, seed=5), session=sid)
        s.proc.kill()
        s.proc.wait()
        s.stop()
        s2 = self.start("--session-dir", sdir)
        got = [s2.complete(dict(SAMPLING, max_tokens=20, seed=4), session=sid)["choices"][0]
               ["token_ids"] for sid in sids]
        ref = self.start()
        rsids = [ref.new_session() for _ in range(3)]
        self.run_sessions(ref, rsids, 20)
        for sid in rsids:
            ref.stream(dict(SAMPLING, max_tokens=10, seed=5), session=sid)
        want = [ref.complete(dict(SAMPLING, max_tokens=20, seed=4), session=sid)["choices"][0]
                ["token_ids"] for sid in rsids]
        self.assertEqual(got, want)
        # Without --durable the same kill loses them (they were resident, never parked).
        s3 = self.start("--session-dir", self.session_dir("plain"))
        sid = s3.new_session()
        s3.complete(dict(SAMPLING, prompt=PROMPT, max_tokens=5), session=sid)
        s3.proc.kill()
        s3.proc.wait()
        s3.stop()
        s4 = self.start("--session-dir", self.session_dir("plain"))
        self.assertEqual(s4.request("GET", f"/v1/sessions/{sid}")[0], 404)

    def test_shutdown_ends_streams_and_parks_their_sessions(self):
        sdir = self.session_dir()
        s = self.start("--session-dir", sdir)
        sid = s.new_session()
        c = s.conn()
        c.request("POST", f"/v1/sessions/{sid}/completions",
                  body=json.dumps({"prompt": PROMPT, "max_tokens": 100000, "stream": True}))
        r = c.getresponse()
        ids, finish, done = [], None, False
        for raw in r:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: "):
                ch = json.loads(line[6:])["choices"][0]
                ids += ch["token_ids"]
                finish = ch["finish_reason"]
                if len(ids) == 50:
                    s.proc.send_signal(signal.SIGTERM)
        self.assertTrue(done)
        self.assertEqual(finish, "shutdown")
        self.assertEqual(s.stop(), 0)
        s2 = self.start("--session-dir", sdir)
        info = s2.request("GET", f"/v1/sessions/{sid}")[1]
        self.assertEqual(info["position"], len(PROMPT) + len(ids))  # every token sent was kept

    def test_disconnect_cancels_generation(self):
        s = self.start()
        sid = s.new_session()
        sock = socket.create_connection(("127.0.0.1", s.port))
        body = json.dumps({"prompt": PROMPT, "max_tokens": 100000, "stream": True})
        sock.sendall((f"POST /v1/sessions/{sid}/completions HTTP/1.1\r\nHost: x\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                      + body).encode())
        received = b""
        while received.count(b"data: ") < 5:
            received += sock.recv(4096)
        sock.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            info = s.request("GET", f"/v1/sessions/{sid}")[1]
            if info["state"] == "resident":
                break
            time.sleep(0.05)
        self.assertEqual(info["state"], "resident")
        self.assertLess(info["position"], 100000)
        self.assertEqual(s.metrics()["tconst_generations_cancelled_total"], 1)
        # The session holds what was generated and still works.
        self.assertEqual(len(s.complete({"max_tokens": 3}, session=sid)["choices"][0]
                             ["token_ids"]), 3)

    def test_non_streaming_disconnect_cancels_generation(self):
        s = self.start()
        for path in ("/v1/completions", None):  # a private session, then a named one
            sid = None if path else s.new_session()
            path = path or f"/v1/sessions/{sid}/completions"
            before = s.metrics()
            sock = socket.create_connection(("127.0.0.1", s.port))
            body = json.dumps({"prompt": PROMPT, "max_tokens": 100000})
            sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                          + body).encode())
            # Wait until it generates, then hang up without reading a byte.
            deadline = time.time() + 20
            while time.time() < deadline and (s.metrics()["tconst_tokens_generated_total"]
                                              < before["tconst_tokens_generated_total"] + 20):
                time.sleep(0.02)
            sock.close()
            deadline = time.time() + 5
            while time.time() < deadline:
                m = s.metrics()
                if m["tconst_generations_active"] == 0:
                    break
                time.sleep(0.05)
            self.assertEqual(m["tconst_generations_active"], 0)
            self.assertEqual(m["tconst_generations_cancelled_total"],
                             before["tconst_generations_cancelled_total"] + 1)
            self.assertLess(m["tconst_tokens_generated_total"] - before["tconst_tokens_generated_total"],
                            100000)
            if sid:  # the session is free again and holds what was generated
                info = s.request("GET", f"/v1/sessions/{sid}")[1]
                self.assertEqual(info["state"], "resident")
                self.assertEqual(len(s.complete({"max_tokens": 3}, session=sid)["choices"][0]
                                     ["token_ids"]), 3)

    def test_listen_backlog_holds_many_waiting_connections(self):
        # While the server is stopped, the kernel completes connections into the listen queue up to
        # the backlog; beyond it, connections wait (their SYNs dropped).
        def waiting_connections(*extra):
            s = self.start(*extra)
            s.proc.send_signal(signal.SIGSTOP)
            socks, ok = [], 0
            try:
                for _ in range(40):
                    c = socket.socket()
                    c.settimeout(0.3)
                    try:
                        c.connect(("127.0.0.1", s.port))
                        ok += 1
                    except (socket.timeout, OSError):
                        pass
                    socks.append(c)
            finally:
                s.proc.send_signal(signal.SIGCONT)
            served = 0
            for c in socks[:ok]:  # each connected client is served once the server runs
                c.settimeout(30)
                c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                served += c.recv(64).startswith(b"HTTP/1.1 200")
            for c in socks:
                c.close()
            s.stop()
            return ok, served
        self.assertEqual(waiting_connections(), (40, 40))  # the default backlog, 512
        ok, served = waiting_connections("--backlog", 4)
        self.assertLess(ok, 10)
        self.assertEqual(served, ok)

    def test_budget_counts_window_buffers(self):
        info = json.loads(subprocess.run([TCONST_BIN, "info", "--model", MODEL, "--json"],
                                         capture_output=True, text=True, check=True).stdout)
        W, d, f = info["generate_window"], info["n_embd"], info["ffn_hidden"]
        window = W * (6 * d + 2 * f) * 4  # at least x, xn, qkv, att, h1, h3 of a window, float
        s = self.start("--session-dir", self.session_dir())
        first = s.request("GET", f"/v1/sessions/{s.new_session()}")[1]
        per = first["resident_bytes"]
        self.assertEqual(first["cache_bytes"], info["fixed_cache_bytes"])
        self.assertGreaterEqual(per, first["cache_bytes"] + window)
        s.stop()
        # A budget for 3 such sessions holds 3: the fourth parks the least recently used.
        s = self.start("--session-dir", self.session_dir("b"), "--max-resident-bytes",
                       3 * per + 4096)
        ids = [s.new_session() for _ in range(4)]
        states = [s.request("GET", f"/v1/sessions/{i}")[1] for i in ids]
        self.assertEqual([st["state"] for st in states], ["parked", "resident", "resident",
                                                          "resident"])
        m = s.metrics()
        self.assertEqual(m["tconst_resident_cache_bytes"],
                         sum(st["resident_bytes"] for st in states))
        self.assertEqual(m["tconst_resident_cache_bytes"], 3 * per)

    # ---- bad input and faults ------------------------------------------------------------------

    def test_bad_requests_get_their_status(self):
        s = self.start("--max-context", 100, "--max-body-bytes", 4096)
        sid = s.new_session()
        cases = [
            ("POST", "/v1/completions", None, "{not json", 400),
            ("POST", "/v1/completions", None, "[1, 2]", 400),
            ("POST", "/v1/completions", {"max_tokens": 3}, None, 400),  # no prompt
            ("POST", "/v1/completions", {"prompt": 5}, None, 400),
            ("POST", "/v1/completions", {"prompt": [1, "a"]}, None, 400),
            ("POST", "/v1/completions", {"prompt": [1, 256]}, None, 400),
            ("POST", "/v1/completions", {"prompt": [-1]}, None, 400),
            ("POST", "/v1/completions", {"prompt": [2**70]}, None, 400),
            ("POST", "/v1/completions", {"prompt": "x" * 101}, None, 400),  # > max_context
            ("POST", "/v1/completions", {"prompt": "", "max_tokens": 3}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "max_tokens": -1}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 10**12}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "max_tokens": "3"}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 1.5}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "temperature": -1}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "top_p": 0}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "seed": -3}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "stop": [""]}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "stop": 7}, None, 400),
            ("POST", "/v1/completions", {"prompt": "a", "stream": "yes"}, None, 400),
            ("POST", "/v1/completions", None, json.dumps({"prompt": "a" * 5000}), 413),
            ("POST", "/v1/sessions/sess_0000/completions", {"prompt": "a"}, None, 404),
            ("POST", "/v1/sessions/../x/completions", {"prompt": "a"}, None, 404),
            ("GET", "/v1/sessions/nope", None, None, 404),
            ("DELETE", "/v1/sessions/nope", None, None, 404),
            ("POST", f"/v1/sessions/{sid}/completions", {"max_tokens": 2}, None, 400),  # empty
            ("GET", "/v1/nothing", None, None, 404),
        ]
        for method, path, body, raw, want in cases:
            status, payload, _ = s.request(method, path, body, raw)
            self.assertEqual(status, want, (method, path, body, raw and raw[:40], payload))
            self.assertIsInstance(payload, dict, payload)
            self.assertEqual(payload["error"]["code"], want)
            self.assertTrue(payload["error"]["message"])
        # A session filled to max_context ends its generation cleanly and refuses more prompt.
        got = s.complete({"prompt": "a" * 90, "max_tokens": 50}, session=sid)
        self.assertEqual(got["usage"]["completion_tokens"], 10)
        self.assertEqual(got["choices"][0]["finish_reason"], "length")
        self.assertEqual(s.request("POST", f"/v1/sessions/{sid}/completions",
                                   {"prompt": "b"})[0], 400)
        self.assertEqual(s.request("GET", "/health")[0], 200)
        self.assertEqual(len(s.complete({"prompt": "ab", "max_tokens": 4})["choices"][0]
                             ["token_ids"]), 4)

    def test_full_server_answers_503_with_retry_after(self):
        s = self.start("--max-active", 1, "--max-queue", 0)
        c = s.conn()
        c.request("POST", "/v1/completions",
                  body=json.dumps({"prompt": PROMPT, "max_tokens": 100000, "stream": True}))
        r = c.getresponse()
        r.readline()  # the first event: the generation is running
        status, payload, resp = s.request("POST", "/v1/completions", {"prompt": "a"})
        self.assertEqual(status, 503)
        self.assertEqual(resp.getheader("Retry-After"), "1")
        self.assertEqual(payload["error"]["code"], 503)
        c.close()

    def test_corrupted_snapshot_is_an_error_for_that_session_only(self):
        sdir = self.session_dir()
        s = self.start("--session-dir", sdir)
        good, bad = s.new_session(), s.new_session()
        for sid in (good, bad):
            s.complete({"prompt": PROMPT, "max_tokens": 5}, session=sid)
        self.assertEqual(s.stop(), 0)
        path = os.path.join(sdir, bad + ".tcsnap")
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        open(os.path.join(sdir, "garbage.tcsnap"), "wb").write(b"not a snapshot")
        s2 = self.start("--session-dir", sdir)
        status, payload, _ = s2.request("POST", f"/v1/sessions/{bad}/completions",
                                        {"max_tokens": 3})
        self.assertEqual(status, 500)
        self.assertIn("checksum", payload["error"]["message"])
        info = s2.request("GET", f"/v1/sessions/{bad}")[1]
        self.assertEqual(info["state"], "error")
        self.assertEqual(s2.request("GET", "/v1/sessions/garbage")[1]["state"], "error")
        self.assertEqual(len(s2.complete({"max_tokens": 3}, session=good)["choices"][0]
                             ["token_ids"]), 3)
        self.assertEqual(s2.metrics()["tconst_snapshot_restore_failures_total"], 1)

    def test_failed_snapshot_write_keeps_previous_state(self):
        sdir = self.session_dir()
        s = self.start("--session-dir", sdir)
        sid = s.new_session()
        s.complete(dict(SAMPLING, prompt=PROMPT, max_tokens=20, seed=1), session=sid)
        self.assertEqual(s.stop(), 0)
        path = os.path.join(sdir, sid + ".tcsnap")
        before = open(path, "rb").read()
        # Files may not grow past 64 KiB: every snapshot write (about 0.9 MB) fails.
        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))  # noqa: E731
        s2 = self.start("--session-dir", sdir, "--max-resident-bytes", 1, preexec_fn=limit)
        got = s2.complete(dict(SAMPLING, max_tokens=20, seed=2), session=sid)
        # The idle session could not be parked: it stays resident, the failure is counted.
        m = s2.metrics()
        self.assertGreaterEqual(m["tconst_snapshot_write_failures_total"], 1)
        self.assertEqual(m["tconst_sessions_resident"], 1)
        self.assertEqual(open(path, "rb").read(), before)
        self.assertEqual([f for f in os.listdir(sdir) if f.endswith(".tmp")], [])
        # It continues exactly.
        ref = self.start()
        rsid = ref.new_session()
        ref.complete(dict(SAMPLING, prompt=PROMPT, max_tokens=20, seed=1), session=rsid)
        want = ref.complete(dict(SAMPLING, max_tokens=20, seed=2), session=rsid)
        self.assertEqual(got["choices"][0]["token_ids"], want["choices"][0]["token_ids"])
        more = s2.complete(dict(SAMPLING, max_tokens=10, seed=3), session=sid)
        want = ref.complete(dict(SAMPLING, max_tokens=10, seed=3), session=rsid)
        self.assertEqual(more["choices"][0]["token_ids"], want["choices"][0]["token_ids"])
        self.assertNotEqual(s2.stop(), 0)  # the shutdown could not park it, and says so
        self.assertIn("could not be parked", s2.stderr)
        self.assertEqual(open(path, "rb").read(), before)

    def test_model_file_replaced_while_serving(self):
        model = os.path.join(self.dir, "model.safetensors")
        shutil.copy(MODEL, model)
        s = self.start(model=model)
        want = s.complete(dict(SAMPLING, prompt=PROMPT, max_tokens=30, seed=8))
        with open(model, "r+b") as f:  # overwritten in place, then truncated
            f.write(os.urandom(4096))
            f.truncate(1000)
        got = s.complete(dict(SAMPLING, prompt=PROMPT, max_tokens=30, seed=8))
        self.assertEqual(got["choices"][0]["token_ids"], want["choices"][0]["token_ids"])
        os.remove(model)
        self.assertEqual(s.request("GET", "/health")[0], 200)

    # ---- many clients --------------------------------------------------------------------------

    def test_32_concurrent_streams_each_get_their_own_tokens(self):
        n, tokens = 32, 80
        sdir = self.session_dir()
        probe = self.start()
        sid = probe.new_session()  # the bytes of a session after such a stream
        probe.complete(dict(SAMPLING, prompt=PROMPT + " 10", max_tokens=tokens), session=sid)
        one = probe.request("GET", f"/v1/sessions/{sid}")[1]["resident_bytes"]
        budget = 40 * one
        s = self.start("--session-dir", sdir, "--max-resident-bytes", budget, "--max-active", n)
        prompts = [f"{PROMPT} {i}" for i in range(n)]
        alone = [probe.complete(dict(SAMPLING, prompt=p, max_tokens=tokens, seed=100 + i))
                 ["choices"][0]["token_ids"] for i, p in enumerate(prompts)]
        results, errors, peak = [None] * n, [], [0.0]
        stop_watch = threading.Event()

        def client(i):
            try:
                sid = s.new_session()
                results[i] = s.stream(dict(SAMPLING, prompt=prompts[i], max_tokens=tokens,
                                           seed=100 + i), session=sid)[0]
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        def watch():
            while not stop_watch.is_set():
                peak[0] = max(peak[0], s.metrics()["tconst_resident_cache_bytes"])
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stop_watch.set()
        watcher.join()
        self.assertEqual(errors, [])
        self.assertEqual(results, alone)
        m = s.metrics()
        self.assertEqual(m["tconst_tokens_generated_total"], n * tokens)
        self.assertLessEqual(peak[0], budget)
        self.assertLessEqual(m["tconst_resident_cache_bytes"], budget)
        self.assertGreater(m["tconst_step_seconds_count"], 0)
        # More sessions than the budget holds: the least recently used are parked.
        for _ in range(100):
            s.new_session()
            m = s.metrics()
            self.assertLessEqual(m["tconst_resident_cache_bytes"], budget)
            if m["tconst_session_parks_total"] > 0:
                break
        self.assertGreater(m["tconst_session_parks_total"], 0)
        self.assertGreater(m["tconst_sessions_parked"], 0)

if __name__ == "__main__":
    unittest.main()
