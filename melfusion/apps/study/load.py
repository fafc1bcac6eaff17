"""Many raters at once against a running study server, and what must hold afterwards: every rating
that got a success answer is stored, none twice, and a rater whose server went away carries on at
its next unrated item. Used by benchmarks/bench_study_load.py and the tests.

Each rater is an asyncio task with its own httpx client (so its own cookie) doing what a browser
does: start, then per item load the page, fetch the audio (a Range request, as an audio element
does) and post the scores. A request that gets no answer (the server was killed) is retried from
the page, which is how a person carries on after reloading.
"""
from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from melfusion.apps.study import store
from melfusion.apps.study.app import COOKIE

ITEM_RE = re.compile(r"name='item' value='([0-9a-f]{16})'")
MEASURE_RE = re.compile(r"name='(OVL|REL|IMSM)' value='1'")
AUDIO_RE = re.compile(r"<audio[^>]* src='(/media/[0-9a-f]{16}\.wav)'")
URL_RE = re.compile(r"study at (http://\S+?)/ ")
RETRY_S = 0.1


@dataclass
class Rater:
    id: str = ""
    acked: list[str] = field(default_factory=list)    # items whose POST was answered 303 (stored)
    unacked: list[str] = field(default_factory=list)  # items posted when no answer came back
    post_s: list[float] = field(default_factory=list)  # seconds per acknowledged POST
    page_s: list[float] = field(default_factory=list)  # seconds per rating page
    resumes: list[tuple[str, str | None]] = field(default_factory=list)  # (page shown, store's next item)
    lost_requests: int = 0
    anomalies: list[str] = field(default_factory=list)


class _Session:
    """One rater's requests; `send` answers None when the server gave no answer."""

    def __init__(self, client: httpx.AsyncClient, rater: Rater):
        self.client, self.rater = client, rater

    async def send(self, method: str, url: str, **kwargs) -> httpx.Response | None:
        try:
            return await self.client.request(method, url, **kwargs)
        except httpx.TransportError:  # refused, reset, closed mid-answer, timed out
            self.rater.lost_requests += 1
            await asyncio.sleep(RETRY_S)
            return None


class _Gate:
    """Opens once every rater has its cookie (or gave up), so the ratings really come at once."""

    def __init__(self, n: int):
        self.waiting, self.open = n, asyncio.Event()

    def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.open.set()


async def _one_rater(r: Rater, base: str, per_rater: int, gate: _Gate, study_dir, media: bool) -> None:
    async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=120) as client:
        s = _Session(client, r)
        while (resp := await s.send("POST", "/start")) is None:
            pass
        r.id = client.cookies.get(COOKIE) or ""
        gate.arrive()
        if resp.status_code != 303 or not r.id:
            r.anomalies.append(f"POST /start: {resp.status_code}")
            return
        await gate.open.wait()
        con = store.connect(study_dir) if study_dir is not None else None
        try:
            await _rate_items(s, r, per_rater, con, media)
        finally:
            if con is not None:
                con.close()


async def _rate_items(s: _Session, r: Rater, per_rater: int, con, media: bool) -> None:
    lost = False  # an answer went missing since the last page: the next page is a resume
    while len(r.acked) < per_rater:
        t0 = time.perf_counter()
        if (resp := await s.send("GET", "/rate")) is None:
            lost = True
            continue
        r.page_s.append(time.perf_counter() - t0)
        m = ITEM_RE.search(resp.text)
        if resp.status_code != 200 or m is None:
            r.anomalies.append(f"GET /rate: {resp.status_code}, no item")
            return
        item, page = m.group(1), resp.text
        if lost and con is not None:
            # Only this rater writes its rows and none of its requests is in flight: the page must
            # show exactly what the database says comes next.
            nxt = store.next_item(con, r.id)[0]
            r.resumes.append((item, nxt["id"] if nxt is not None else None))
        lost = False
        if item in r.acked:
            r.anomalies.append(f"shown {item} again after it was stored")
        if media:
            resp = await s.send("GET", AUDIO_RE.search(page).group(1), headers={"Range": "bytes=0-"})
            if resp is None:
                lost = True
                continue
            if resp.status_code != 206:
                r.anomalies.append(f"GET audio: {resp.status_code}")
        t0 = time.perf_counter()
        resp = await s.send("POST", "/rate", data={"item": item, **{k: "5" for k in MEASURE_RE.findall(page)}})
        if resp is None:
            r.unacked.append(item)
            lost = True
        elif resp.status_code == 303:
            r.post_s.append(time.perf_counter() - t0)
            r.acked.append(item)
        else:
            r.anomalies.append(f"POST /rate: {resp.status_code}")


async def _fault_when(raters: list[Rater], tasks, fault, after: int) -> None:
    while sum(len(r.acked) for r in raters) < after and not all(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    await asyncio.to_thread(fault, sum(len(r.acked) for r in raters))


def run_raters(base: str, n_raters: int, per_rater: int, study_dir=None, media: bool = True,
               fault=None, fault_after: int = 0, timeout_s: float = 900) -> tuple[list[Rater], float]:
    """`n_raters` raters rating `per_rater` items each, all at once; the seconds from the moment
    all had started. With `study_dir`, each resume is compared with the database. `fault` (a
    blocking function, e.g. kill and restart the server) runs once `fault_after` ratings are in,
    and is given how many are.
    Raters retry a server that does not answer, so `timeout_s` bounds the whole run."""

    async def main():
        raters, gate = [Rater() for _ in range(n_raters)], _Gate(n_raters)
        tasks = [asyncio.create_task(_one_rater(r, base, per_rater, gate, study_dir, media)) for r in raters]
        await gate.open.wait()
        t0 = time.perf_counter()
        if fault is not None:
            await _fault_when(raters, tasks, fault, fault_after)
        await asyncio.gather(*tasks)
        return raters, time.perf_counter() - t0

    async def bounded():
        return await asyncio.wait_for(main(), timeout_s)

    return asyncio.run(bounded())


@dataclass
class Check:
    acked: int       # ratings answered "stored"
    stored: int      # (rater, item) pairs in the database, for these raters
    lost: list       # acked, not stored
    doubled: list    # stored with more rows than the item has measures
    unexplained: list  # stored, yet never posted by these raters
    in_doubt: int    # stored, posted, answer lost: fine either way, the rater moved on
    wrong_resumes: list
    anomalies: list

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.unexplained or self.wrong_resumes or self.anomalies)


def check(study_dir, raters: list[Rater]) -> Check:
    con = store.connect(study_dir)
    rows = con.execute("SELECT r.rater_id, r.item_id, i.task, COUNT(*), COUNT(DISTINCT r.measure) FROM ratings r "
                       "JOIN items i ON i.id = r.item_id GROUP BY r.rater_id, r.item_id").fetchall()
    con.close()
    mine = {r.id for r in raters}
    stored = {(rid, item): (task, n, distinct) for rid, item, task, n, distinct in rows if rid in mine}
    acked = {(r.id, i) for r in raters for i in r.acked}
    unacked = {(r.id, i) for r in raters for i in r.unacked}
    return Check(
        acked=sum(len(r.acked) for r in raters), stored=len(stored),
        lost=sorted(acked - set(stored)),
        doubled=sorted(k for k, (task, n, distinct) in stored.items() if n != distinct or n != len(store.TASKS[task])),
        unexplained=sorted(set(stored) - acked - unacked),
        in_doubt=len((set(stored) - acked) & unacked),
        wrong_resumes=[(r.id, shown, nxt) for r in raters for shown, nxt in r.resumes if shown != nxt],
        anomalies=[(r.id, a) for r in raters for a in r.anomalies] + [(r.id, "acked twice") for r in raters
                                                                       if len(set(r.acked)) != len(r.acked)])


def percentiles(values: list[float]) -> dict[str, float]:
    xs = sorted(values)
    if not xs:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {"p50": xs[len(xs) // 2], "p95": xs[min(len(xs) - 1, int(0.95 * len(xs)))], "max": xs[-1]}


class ServerProcess:
    """`melfusion study serve DIR` in a child process (the real command line), which can be killed
    with SIGKILL and started again on the same port."""

    def __init__(self, study_dir, port: int = 0):
        self.dir, self.port = Path(study_dir), port
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        import melfusion

        env = dict(os.environ, PYTHONPATH=str(Path(melfusion.__file__).resolve().parents[1]))
        self.proc = subprocess.Popen([sys.executable, "-m", "melfusion.cli", "study", "serve", str(self.dir),
                                      "--port", str(self.port)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue = queue.Queue()

        def drain(stream):  # read on until the child ends, so a chatty child never blocks on a full pipe
            for line in stream:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, args=(self.proc.stderr,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the study server did not start:\n" + "".join(self.log[-20:]))
            if m := URL_RE.search(line):
                self.port = int(m.group(1).rsplit(":", 1)[1])
                return

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine's OOM killer or a crash ends it."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
