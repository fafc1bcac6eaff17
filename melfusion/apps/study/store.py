"""The study's database: items to rate, raters, ratings. SQLite in WAL mode, one row per rating
(the settings, and why, are in `connect` and docs/study-server.md).

Three task kinds, as in the paper's screens (appendix G):
  ovl_rel  image + caption + music, rated for OVL (overall quality) and REL (relevance)  (Fig. 4)
  text     caption + music only, OVL and REL: the comparison with text-only systems     (Fig. 5)
  imsm     image + music, rated for IMSM (image-music similarity)                         (Fig. 6)
"""
from __future__ import annotations

import hashlib
import random
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from melfusion.errors import MelFusionError

TASKS = {"ovl_rel": ("OVL", "REL"), "text": ("OVL", "REL"), "imsm": ("IMSM",)}
SCORE_MIN, SCORE_MAX = 1, 10
DB_NAME = "study.sqlite"
BUSY_TIMEOUT_S = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,          -- opaque: reveals neither the system nor the record
    task TEXT NOT NULL,
    system TEXT NOT NULL,
    record_id TEXT NOT NULL,
    caption TEXT,                 -- NULL when the task does not show it
    image TEXT,                   -- file name under media/, NULL when not shown
    audio TEXT NOT NULL           -- file name under media/
);
CREATE TABLE IF NOT EXISTS raters (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    rater_id TEXT NOT NULL REFERENCES raters(id),
    item_id TEXT NOT NULL REFERENCES items(id),
    measure TEXT NOT NULL,
    score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 10),
    created_at TEXT NOT NULL,
    UNIQUE (rater_id, item_id, measure)
);
"""


class AlreadyRated(MelFusionError):
    pass


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(study_dir: str | Path, create: bool = False) -> sqlite3.Connection:
    path = Path(study_dir) / DB_NAME
    if not create and not path.is_file():
        raise MelFusionError(f"not a study folder (no {DB_NAME}): {study_dir}")
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    # WAL: raters reading pages never wait for a rating being written, nor it for them, and a commit
    # is one append to the log. A crashed server's log is replayed by the next connection.
    con.execute("PRAGMA journal_mode=WAL")
    # FULL: each commit is on disk (fsync, about 2 ms here) before the server answers "stored", so a
    # rating acknowledged survives a power cut too; NORMAL would survive only a killed process.
    con.execute("PRAGMA synchronous=FULL")
    # A write waits up to this long for a lock held by another connection (a second process on the
    # study, a checkpoint, recovery after a crash) instead of failing at once.
    con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    con.execute("PRAGMA foreign_keys=ON")
    if create:
        con.executescript(SCHEMA)
    return con


def add_rater(con: sqlite3.Connection, rater_id: str) -> None:
    con.execute("INSERT OR IGNORE INTO raters (id, created_at) VALUES (?, ?)", (rater_id, now()))


def rater_exists(con: sqlite3.Connection, rater_id: str) -> bool:
    return con.execute("SELECT 1 FROM raters WHERE id = ?", (rater_id,)).fetchone() is not None


def get_item(con: sqlite3.Connection, item_id: str):
    return con.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()


def rater_order(item_ids: list[str], rater_id: str) -> list[str]:
    """This rater's own random order of the items: stable across visits, different between raters."""
    seed = int.from_bytes(hashlib.sha256(rater_id.encode()).digest()[:8], "big")
    order = sorted(item_ids)
    random.Random(seed).shuffle(order)
    return order


def next_item(con: sqlite3.Connection, rater_id: str):
    """The next item this rater has not rated, in the rater's order; None when all are done."""
    done = {r[0] for r in con.execute("SELECT DISTINCT item_id FROM ratings WHERE rater_id = ?", (rater_id,))}
    all_ids = [r[0] for r in con.execute("SELECT id FROM items")]
    for item_id in rater_order(all_ids, rater_id):
        if item_id not in done:
            return get_item(con, item_id), len(done), len(all_ids)
    return None, len(done), len(all_ids)


def parse_score(value) -> int:
    try:
        text = str(value).strip()
        score = int(text)
    except (TypeError, ValueError):
        raise MelFusionError(f"a rating must be a whole number from {SCORE_MIN} to {SCORE_MAX}") from None
    if not SCORE_MIN <= score <= SCORE_MAX:
        raise MelFusionError(f"a rating must be from {SCORE_MIN} to {SCORE_MAX}, got {score}")
    return score


def record_rating(con: sqlite3.Connection, rater_id: str, item_id: str, scores: dict) -> None:
    """Store one rating row per measure of the item's task, all or none.

    Refuses unknown raters and items, missing or extra measures, scores outside 1-10, and a
    second rating of the same item by the same rater."""
    if not rater_exists(con, rater_id):
        raise MelFusionError("unknown rater")
    item = get_item(con, item_id)
    if item is None:
        raise MelFusionError("unknown item")
    measures = TASKS[item["task"]]
    if set(scores) != set(measures):
        raise MelFusionError(f"this item is rated for {', '.join(measures)}")
    values = {m: parse_score(scores[m]) for m in measures}
    stamp = now()
    con.execute("BEGIN IMMEDIATE")
    try:
        for m in measures:
            con.execute("INSERT INTO ratings (rater_id, item_id, measure, score, created_at) VALUES (?, ?, ?, ?, ?)",
                        (rater_id, item_id, m, values[m], stamp))
    except sqlite3.IntegrityError:
        con.execute("ROLLBACK")
        raise AlreadyRated("you have already rated this item") from None
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
