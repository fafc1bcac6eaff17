"""`melfusion study report` and `export`: per system and measure, mean, 95% confidence interval and
count, on the raters' 1-10 scale and on the paper's 0-100 scale (1 -> 0, 10 -> 100, linear)."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from scipy import stats

from melfusion.apps.study import store

COLUMNS = ["task", "system", "measure", "n", "mean", "ci95_low", "ci95_high",
           "mean_100", "ci95_low_100", "ci95_high_100"]
TASK_ORDER = {t: i for i, t in enumerate(store.TASKS)}
MEASURE_ORDER = {"OVL": 0, "REL": 1, "IMSM": 2}


def to_100(score: float) -> float:
    return (score - store.SCORE_MIN) / (store.SCORE_MAX - store.SCORE_MIN) * 100.0


def summarise(scores: list[int]) -> tuple[float, float, float]:
    """Mean and the two ends of its 95% Student-t confidence interval (NaN ends for one rating)."""
    n = len(scores)
    mean = sum(scores) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def report_rows(study_dir) -> list[dict]:
    con = store.connect(study_dir)
    groups: dict[tuple, list[int]] = {}
    for r in con.execute("SELECT i.task, i.system, r.measure, r.score FROM ratings r JOIN items i ON i.id = r.item_id"):
        groups.setdefault((r["task"], r["system"], r["measure"]), []).append(r["score"])
    con.close()
    rows = []
    for (task, system, measure), scores in sorted(
            groups.items(), key=lambda kv: (TASK_ORDER.get(kv[0][0], 9), MEASURE_ORDER.get(kv[0][2], 9), kv[0][1])):
        mean, lo, hi = summarise(scores)
        rows.append({"task": task, "system": system, "measure": measure, "n": len(scores), "mean": mean,
                     "ci95_low": lo, "ci95_high": hi, "mean_100": to_100(mean),
                     "ci95_low_100": to_100(lo), "ci95_high_100": to_100(hi)})
    return rows


def _fmt(x) -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.2f}"
    return str(x)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_fmt(r[c]) for c in COLUMNS])
    return buf.getvalue()


def to_markdown(rows: list[dict], title: str = "Listening study") -> str:
    lines = [f"# {title}: ratings per system and measure", "",
             "Mean with its 95% confidence interval (Student t), on the 1-10 scale raters used and on "
             "the paper's 0-100 scale. Tasks: ovl_rel = image + text + music (Fig. 4), text = text + music "
             "(Fig. 5), imsm = image + music (Fig. 6).", "",
             "| task | system | measure | n | mean (1-10) | 95% CI (1-10) | mean (0-100) | 95% CI (0-100) |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        ci = f"{_fmt(r['ci95_low'])} - {_fmt(r['ci95_high'])}" if r["n"] > 1 else "n/a"
        ci100 = f"{_fmt(r['ci95_low_100'])} - {_fmt(r['ci95_high_100'])}" if r["n"] > 1 else "n/a"
        lines.append(f"| {r['task']} | {r['system']} | {r['measure']} | {r['n']} | {_fmt(r['mean'])} | {ci} | "
                     f"{_fmt(r['mean_100'])} | {ci100} |")
    if not rows:
        lines.append("| (no ratings yet) | | | 0 | | | | |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(study_dir, out=None) -> tuple[str, Path]:
    from melfusion.apps.study.build import load_meta

    meta = load_meta(study_dir)
    rows = report_rows(study_dir)
    csv_path = Path(out) if out else Path(study_dir) / "report.csv"
    md = to_markdown(rows, meta.get("title", "Listening study"))
    _atomic_write(csv_path, to_csv(rows))
    _atomic_write(csv_path.with_suffix(".md"), md)
    return md, csv_path


EXPORT_COLUMNS = ["rating_id", "created_at", "rater_id", "item_id", "task", "system", "record_id", "measure", "score"]


def export_csv(study_dir) -> str:
    con = store.connect(study_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    for r in con.execute("SELECT r.id AS rating_id, r.created_at, r.rater_id, r.item_id, i.task, i.system, "
                         "i.record_id, r.measure, r.score FROM ratings r JOIN items i ON i.id = r.item_id "
                         "ORDER BY r.id"):
        w.writerow([r[c] for c in EXPORT_COLUMNS])
    con.close()
    return buf.getvalue()


def export_ratings(study_dir, out) -> int:
    text = export_csv(study_dir)
    _atomic_write(Path(out), text)
    return text.count("\n") - 1
