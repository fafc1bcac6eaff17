"""Ten clients at once against `melfusion serve --model tiny` on loopback.

    .venv/bin/python benchmarks/bench_demo_load.py [--clients 10] [--steps 25] [--duration 4]
                                                   [--busy-queue 4] [--leave-queued 3] [--leave-running 1]

Starts the real server in a child process (its own TMPDIR, so its result folders can be counted)
and drives it over plain HTTP as the browser does: upload the image, ask for the preview, join the
generation queue, read the event stream until the result. Three rounds:

  all      every client at once on the default server: each must get its music, in a bounded wait
  busy     a second server with --max-queue BUSY_QUEUE: each client gets music or, at once, "busy"
  leave    on the first server again, some clients close their stream while queued, one while its
           music is being composed: the queued leavers' work must never run

Prints per-client outcome and wait, the server's peak RSS (VmHWM) per round, and the checks.
Also tries to skip the queue by POSTing /gradio_api/run/generate (it must be refused).
Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "beach-post.png"
API = "/gradio_api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoServer:
    """`python -m melfusion serve --model tiny` in a child process with a private TMPDIR."""

    def __init__(self, *extra: str, startup_s: float = 300.0):
        self.extra, self.startup_s = extra, startup_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
        self.proc = None

    def __enter__(self):
        env = {**os.environ, "TMPDIR": str(self.tmp), "GRADIO_TEMP_DIR": str(self.tmp / "gradio"),
               "GRADIO_ANALYTICS_ENABLED": "False"}
        self.log = open(self.tmp / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "melfusion", "serve", "--model", "tiny", "--port",
                                      str(self.port), *self.extra], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the demo server exited: {(self.tmp / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/config", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the demo server did not start")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def memory_mb(self) -> dict:
        """The server process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        return out

    def results(self) -> int:
        """Result folders the server has written (one per generation that finished)."""
        return len(list((self.tmp / "melfusion-demo").glob("result-*")))


class DemoClient:
    """One browser tab's worth of the Gradio protocol (sse_v3), over plain HTTP."""

    def __init__(self, url: str, timeout: float = 600.0):
        self.url = url
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=30))
        self.session = secrets.token_hex(6)
        deps = {d.get("api_name"): d for d in self.http.get(url + "/config").json()["dependencies"]}
        self.generate_dep, self.preview_dep = deps["generate"], deps["preview"]

    def close(self):
        self.http.close()

    def upload(self, path: Path, name: str | None = None, content_type: str = "image/png") -> dict:
        r = self.http.post(self.url + API + "/upload",
                           files=[("files", (name or path.name, path.read_bytes(), content_type))])
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": name or path.name, "meta": {"_type": "gradio.FileData"}}

    def preview(self, filedata) -> tuple[int, dict]:
        """The page's preview call (outside the queue): HTTP status and the JSON answer."""
        r = self.http.post(self.url + API + "/run/preview",
                           json={"data": [filedata], "fn_index": self.preview_dep["id"], "session_hash": self.session,
                                 "event_data": None, "trigger_id": self.preview_dep["targets"][0][0]})
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, {"text": r.text[:200]}

    def generate(self, filedata, caption: str, duration: float, seed: int, steps: int, guidance: float = 3.0,
                 leave: str | None = None) -> dict:
        """Join the queue and read the stream. `leave`: "queued" closes the stream at the first queue
        estimate (before composing starts), "running" once composing has started. Returns the outcome;
        busy when the queue is full."""
        t0 = time.monotonic()
        out = {"outcome": None, "rank": None, "start_s": None, "wait_s": None, "message": ""}
        body = {"data": [filedata, caption, duration, seed, steps, guidance], "event_data": None,
                "fn_index": self.generate_dep["id"], "trigger_id": self.generate_dep["targets"][0][0],
                "session_hash": self.session}
        # json.dumps, not httpx's json=: a hostile client may send a lone surrogate (as "\\ud800") or NaN.
        r = self.http.post(self.url + API + "/queue/join", content=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})
        if r.status_code == 503:  # what the browser shows as "This application is currently busy. Please try again."
            out.update(outcome="busy", wait_s=time.monotonic() - t0, message=r.json().get("detail", ""))
            return out
        if r.status_code != 200:
            out.update(outcome=f"http {r.status_code}", wait_s=time.monotonic() - t0, message=r.text[:200])
            return out
        with self.http.stream("GET", self.url + API + "/queue/data", params={"session_hash": self.session}) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                kind = msg.get("msg")
                if kind == "estimation":
                    out["rank"] = msg.get("rank") if out["rank"] is None else out["rank"]
                    if leave == "queued":
                        out.update(outcome="left while queued", wait_s=time.monotonic() - t0)
                        return out
                elif kind == "process_starts":
                    out["start_s"] = time.monotonic() - t0
                    if leave == "running":
                        time.sleep(0.2)
                        out.update(outcome="left while composing", wait_s=time.monotonic() - t0)
                        return out
                elif kind == "process_completed":
                    out["wait_s"] = time.monotonic() - t0
                    if not msg.get("success"):
                        out.update(outcome="error", message=str(msg.get("output"))[:200])
                    else:
                        status = msg["output"]["data"][-1] or ""
                        out.update(outcome="music" if status.startswith("Composed") else "refused", message=status)
                    return out
                elif kind == "unexpected_error":
                    out.update(outcome="error", wait_s=time.monotonic() - t0, message=str(msg)[:200])
                    return out
        out.update(outcome="stream ended", wait_s=time.monotonic() - t0)
        return out


def run_clients(url: str, n: int, image: Path, steps: int, duration: float, leave: dict | None = None) -> list[dict]:
    """`n` clients at once (a barrier lines up their joins); `leave` maps client index to how it leaves.
    Those leaving while queued join half a second after the rest, so that they are queued behind them."""
    results: list[dict] = [{} for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(i):
        try:
            c = DemoClient(url)
            try:
                f = c.upload(image)
                status, answer = c.preview(f)
                barrier.wait(timeout=120)
                if (leave or {}).get(i) == "queued":
                    time.sleep(0.5)
                results[i] = c.generate(f, f"a calm piano piece, client {i}", duration, i, steps,
                                        leave=(leave or {}).get(i))
                results[i]["preview"] = status
            finally:
                c.close()
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
            results[i] = {"outcome": f"client error {type(exc).__name__}: {exc}", "wait_s": None}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def wait_until_idle(srv: DemoServer, expected: int, timeout: float) -> int:
    """Result folders once the count stops growing (or reaches `expected` and stays a moment)."""
    deadline, last, still = time.monotonic() + timeout, -1, 0
    while time.monotonic() < deadline:
        n = srv.results()
        still = still + 1 if n == last else 0
        if (n >= expected and still >= 4) or still >= 20:
            return n
        last = n
        time.sleep(0.5)
    return srv.results()


def table(title: str, results: list[dict]) -> None:
    print(f"\n{title}")
    print(f"  {'client':>6}  {'outcome':<22} {'rank':>4} {'start s':>8} {'wait s':>7}  message")
    for i, r in enumerate(results):
        fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"  {i:>6}  {r.get('outcome') or '-':<22} {r.get('rank') if r.get('rank') is not None else '-':>4} "
              f"{fmt(r.get('start_s')):>8} {fmt(r.get('wait_s')):>7}  {(r.get('message') or '')[:70]}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--busy-queue", type=int, default=4, help="--max-queue of the second server")
    ap.add_argument("--leave-queued", type=int, default=3)
    ap.add_argument("--leave-running", type=int, default=1)
    ap.add_argument("--image", type=Path, default=EXAMPLE)
    args = ap.parse_args()
    n, failures = args.clients, []

    with DemoServer() as srv:
        base = srv.memory_mb()
        print(f"server up (tiny model, default --max-queue, --concurrency 1): RSS {base['VmRSS']:.0f} MiB")
        bypass = httpx.post(srv.url + API + "/run/generate", json={"data": [None, "x", 1, 0, 1, 1], "fn_index": 2},
                            timeout=60)
        print(f"POST {API}/run/generate (skipping the queue): HTTP {bypass.status_code}")
        if bypass.status_code not in (403, 404):
            failures.append(f"the queue can be skipped: /run/generate answered {bypass.status_code}")

        t0 = time.monotonic()
        everyone = run_clients(srv.url, n, args.image, args.steps, args.duration)
        wall = time.monotonic() - t0
        table(f"round 'all': {n} clients at once ({wall:.1f} s)", everyone)
        mem = srv.memory_mb()
        print(f"  server memory: RSS {mem['VmRSS']:.0f} MiB, peak {mem['VmHWM']:.0f} MiB")
        music = [r for r in everyone if r.get("outcome") == "music"]
        if len(music) != n:
            failures.append(f"round 'all': {n - len(music)} of {n} clients got no music")
        per_job = wall / max(len(music), 1)
        bound = (n + 1) * per_job * 1.5 + 10
        slow = [r for r in everyone if (r.get("wait_s") or 0) > bound]
        if slow:
            failures.append(f"round 'all': {len(slow)} waits over the bound {bound:.0f} s")
        print(f"  about {per_job:.2f} s a generation; longest wait {max(r.get('wait_s') or 0 for r in everyone):.1f} s")

        before = wait_until_idle(srv, srv.results(), 30)
        leave = {i: "queued" for i in range(1, 1 + args.leave_queued)}
        leave.update({0: "running"} if args.leave_running else {})
        t0 = time.monotonic()
        left = run_clients(srv.url, n, args.image, args.steps, args.duration, leave=leave)
        stayers = sum(r.get("outcome") == "music" for r in left)
        queued_leavers = sum(r.get("outcome") == "left while queued" for r in left)
        running_leavers = sum(r.get("outcome") == "left while composing" for r in left)
        ran = wait_until_idle(srv, before + stayers + running_leavers, 120) - before
        table(f"round 'leave': {n} clients, {len(leave)} leave ({time.monotonic() - t0:.1f} s)", left)
        print(f"  generations run: {ran} (stayers {stayers} + leavers while composing {running_leavers}; "
              f"the {queued_leavers} who left while queued must add none)")
        if ran > stayers + running_leavers:
            failures.append(f"round 'leave': {ran - stayers - running_leavers} generation(s) ran for clients who "
                            "had left while queued")
        if stayers != n - len(leave):
            failures.append(f"round 'leave': {n - len(leave) - stayers} staying clients got no music")
        mem = srv.memory_mb()
        print(f"  server memory: RSS {mem['VmRSS']:.0f} MiB, peak {mem['VmHWM']:.0f} MiB")

    with DemoServer("--max-queue", str(args.busy_queue)) as srv:
        t0 = time.monotonic()
        busy = run_clients(srv.url, n, args.image, args.steps, args.duration)
        table(f"round 'busy': {n} clients at once, --max-queue {args.busy_queue} ({time.monotonic() - t0:.1f} s)", busy)
        mem = srv.memory_mb()
        print(f"  server memory: RSS {mem['VmRSS']:.0f} MiB, peak {mem['VmHWM']:.0f} MiB")
        outcomes = [r.get("outcome") for r in busy]
        if any(o not in ("music", "busy") for o in outcomes):
            failures.append(f"round 'busy': outcomes other than music or busy: {sorted(set(outcomes))}")
        if outcomes.count("music") > args.busy_queue + 1 or outcomes.count("busy") == 0:
            failures.append(f"round 'busy': {outcomes.count('music')} music, {outcomes.count('busy')} busy "
                            f"with a queue of {args.busy_queue}")
        slow_busy = [r for r in busy if r.get("outcome") == "busy" and r["wait_s"] > 5]
        if slow_busy:
            failures.append(f"round 'busy': {len(slow_busy)} busy answers took over 5 s")
        print(f"  {outcomes.count('music')} music, {outcomes.count('busy')} busy; busy answered in at most "
              f"{max([r['wait_s'] for r in busy if r.get('outcome') == 'busy'] or [0]):.2f} s")

    print("\nchecks: " + ("all passed" if not failures else "FAILED"))
    for f in failures:
        print(f"  - {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
