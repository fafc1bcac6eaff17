"""The user-study app: building a study, rating over HTTP, refusing bad and repeated ratings,
serving only the study's files (with Range requests), the admin token, the report's statistics, 20
and 30 raters at once, a server killed mid-load and restarted, and the admin create page (only
names from the server's own listing of the sets root, a nonce, no leftovers)."""
import csv
import io
import math
import re
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request

import httpx
import pytest

from apps_fixtures import SYSTEMS, RunningServer, make_generated_sets
from melfusion.apps.study import store
from melfusion.apps.study.build import create_study
from melfusion.apps.study.report import report_rows, summarise, write_report
from melfusion.cli import main
from melfusion.errors import MelFusionError


@pytest.fixture()
def study(tmp_path):
    manifest, systems = make_generated_sets(tmp_path / "sets")
    res = create_study(manifest, systems, tmp_path / "study")
    return tmp_path / "study", res


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class Client:
    """One rater: its cookie, and redirects followed by hand so a cookie set on a 303 is kept."""

    def __init__(self, base):
        self.base = base
        self.cookie = None

    def request(self, path, data=None, headers=None):
        req = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(data).encode() if data is not None else None,
                                     headers={**({"Cookie": self.cookie} if self.cookie else {}), **(headers or {})})
        try:
            with _opener.open(req, timeout=30) as resp:
                body, status, hdrs = resp.read(), resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            body, status, hdrs = exc.read(), exc.code, exc.headers
        if hdrs.get("Set-Cookie"):
            self.cookie = hdrs["Set-Cookie"].split(";")[0]
        if status == 303:
            return self.request(hdrs["Location"])
        return status, body.decode("utf-8", "replace") if not body[:4] in (b"RIFF", b"\x89PNG") else body

    def start(self):
        status, _ = self.request("/start", {})
        assert status == 200 and self.cookie
        return self.cookie.split("=", 1)[1]

    def current_item(self):
        status, body = self.request("/rate")
        m = re.search(r"name='item' value='([0-9a-f]{16})'", body)
        return (m.group(1) if m else None), body

    def rate(self, item, scores):
        return self.request("/rate", {"item": item, **scores})


def scores_for(body, value=7):
    return {m: value for m in ("OVL", "REL", "IMSM") if f"name='{m}'" in body}


def test_create_builds_items_for_every_task_and_system_with_opaque_names(study):
    study_dir, res = study
    assert res["items"] == 3 * 2 * 3 and res["per_task"] == {"ovl_rel": 6, "text": 6, "imsm": 6}
    con = sqlite3.connect(study_dir / "study.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = con.execute("SELECT id, task, system, caption, image, audio FROM items").fetchall()
    assert {r[2] for r in rows} == set(SYSTEMS)
    for item_id, task, system, caption, image, audio in rows:
        assert system not in item_id and system not in audio and re.fullmatch(r"[0-9a-f]{16}\.wav", audio)
        assert (caption is None) == (task == "imsm") and (image is None) == (task == "text")
    assert (study_dir / "admin-token").stat().st_mode & 0o077 == 0


def test_create_refuses_bad_input_cleanly(tmp_path):
    manifest, systems = make_generated_sets(tmp_path / "sets", missing={"tango": ["rec00", "rec01", "rec02"]})
    with pytest.raises(MelFusionError, match="every system"):
        create_study(manifest, systems, tmp_path / "s1")
    with pytest.raises(MelFusionError, match="not found"):
        create_study(manifest, {"x": str(tmp_path / "nope")}, tmp_path / "s2")
    with pytest.raises(MelFusionError, match="unknown task"):
        create_study(manifest, systems, tmp_path / "s3", tasks=["ovl_rel", "karaoke"])
    assert not (tmp_path / "s1").exists() and not list(tmp_path.glob(".s*"))
    assert main(["study", "create", "--manifest", str(manifest), "--system", "bad", "--out", str(tmp_path / "s4")]) == 2


def test_a_rater_rates_every_item_once_in_a_private_order_and_rows_land_in_sqlite(study):
    study_dir, res = study
    with RunningServer(study_dir) as srv:
        a, b = Client(srv.url), Client(srv.url)
        rater_a, rater_b = a.start(), b.start()
        assert rater_a != rater_b
        seen = []
        for _ in range(res["items"]):
            item, body = a.current_item()
            assert item and not any(name in body for name in SYSTEMS)  # system names hidden
            status, _ = a.rate(item, scores_for(body, value=len(seen) % 10 + 1))
            assert status == 200
            seen.append(item)
        item, body = a.current_item()
        assert item is None and "Thank you" in body
        assert len(set(seen)) == res["items"]
        first_b, _ = b.current_item()
        order_b = store.rater_order(seen, rater_b)
        assert first_b == order_b[0] and order_b != store.rater_order(seen, rater_a)
        # Rating an item again is refused and stores nothing.
        status, body = a.rate(seen[0], {"OVL": 5, "REL": 5, "IMSM": 5})
        assert status in (400, 409)
    con = sqlite3.connect(study_dir / "study.sqlite")
    rows = con.execute("SELECT rater_id, item_id, measure, score, created_at FROM ratings").fetchall()
    assert len(rows) == 6 * 2 + 6 * 2 + 6 * 1  # OVL+REL for two tasks, IMSM for one
    assert {r[0] for r in rows} == {rater_a} and all(r[4].startswith("20") for r in rows)


@pytest.mark.parametrize("bad", [{"OVL": 0, "REL": 5}, {"OVL": 11, "REL": 5}, {"OVL": "7.5", "REL": 5},
                                 {"OVL": "x", "REL": 5}, {"OVL": 5}, {}])
def test_ratings_outside_1_to_10_or_incomplete_are_refused(study, bad):
    study_dir, _ = study
    con = store.connect(study_dir)
    item = con.execute("SELECT id FROM items WHERE task = 'ovl_rel' LIMIT 1").fetchone()[0]
    with RunningServer(study_dir) as srv:
        c = Client(srv.url)
        c.start()
        status, body = c.rate(item, bad)
        assert status == 400 and "Traceback" not in body
        status, _ = c.rate("0123456789abcdef", {"OVL": 5, "REL": 5})  # unknown item
        assert status == 400
        status, _ = Client(srv.url).rate(item, {"OVL": 5, "REL": 5})  # no rater cookie
        assert status == 403
    assert con.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 0


def test_only_the_studys_media_are_served_never_a_path_from_the_request(study, tmp_path):
    study_dir, _ = study
    (tmp_path / "secret.txt").write_text("top secret")
    con = store.connect(study_dir)
    audio = con.execute("SELECT audio FROM items LIMIT 1").fetchone()[0]
    with RunningServer(study_dir) as srv:
        c = Client(srv.url)
        status, body = c.request(f"/media/{audio}")
        assert status == 200 and body[:4] == b"RIFF"
        for attempt in ["/media/../study.sqlite", "/media/..%2fstudy.sqlite", "/media/%2e%2e/admin-token",
                        "/media/../../secret.txt", "/../secret.txt", "/media//etc/passwd",
                        "/media/..%2f..%2fsecret.txt", "/study.sqlite", "/admin-token", "/media/0123456789abcdef.wav"]:
            status, body = c.request(attempt)
            assert status == 404, attempt
            assert "top secret" not in str(body) and "SQLite" not in str(body)


def test_media_answer_range_requests_so_a_player_can_seek(study):
    study_dir, _ = study
    con = store.connect(study_dir)
    audio, image = con.execute("SELECT audio, image FROM items WHERE image IS NOT NULL LIMIT 1").fetchone()
    data = (study_dir / "media" / audio).read_bytes()
    size = len(data)
    assert size > 1000
    with RunningServer(study_dir) as srv, httpx.Client(base_url=srv.url) as c:
        full = c.get(f"/media/{audio}")
        assert full.status_code == 200 and full.content == data
        assert full.headers["accept-ranges"] == "bytes" and full.headers["content-length"] == str(size)
        assert full.headers["content-type"] == "audio/wav" and full.headers["cache-control"] == "private, max-age=3600"
        assert full.headers["x-content-type-options"] == "nosniff"
        part = c.get(f"/media/{audio}", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}" and part.headers["content-length"] == "100"
        tail = c.get(f"/media/{audio}", headers={"Range": "bytes=100-"})
        assert tail.status_code == 206 and tail.content == data[100:]
        assert tail.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
        last = c.get(f"/media/{audio}", headers={"Range": "bytes=-50"})
        assert last.status_code == 206 and last.content == data[-50:]
        for unsatisfiable in (f"bytes={size}-", f"bytes={size + 1000}-{size + 2000}"):
            r = c.get(f"/media/{audio}", headers={"Range": unsatisfiable})
            assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}", unsatisfiable
            assert data[:100] not in r.content
        png = c.get(f"/media/{image}", headers={"Range": "bytes=0-7"})
        assert png.status_code == 206 and png.content == b"\x89PNG\r\n\x1a\n"
        assert png.headers["content-type"] == "image/png"
        head = c.head(f"/media/{audio}")
        assert head.status_code == 200 and head.headers["content-length"] == str(size) and head.content == b""
        # A range never opens anything the plain request would not.
        for path in ("/media/0123456789abcdef.wav", "/study.sqlite"):
            assert c.get(path, headers={"Range": "bytes=0-99"}).status_code == 404


def test_pages_carry_the_security_headers_and_the_cookie_is_strict(study):
    study_dir, _ = study
    with RunningServer(study_dir) as srv, httpx.Client(base_url=srv.url) as c:
        start = c.post("/start")
        cookie = start.headers["set-cookie"]
        assert start.status_code == 303 and start.headers["location"] == "/rate"
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
        for r in (c.get("/"), c.get("/rate"), c.get("/nope"), c.get("/admin"), start):
            assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["cache-control"] == "no-store" and "server" not in r.headers
        assert c.post("/rate", content=b"item=" + b"x" * 20000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 413
    from melfusion.cli import build_parser

    assert build_parser().parse_args(["study", "serve", str(study_dir)]).host == "127.0.0.1"


def test_admin_pages_need_the_token(study):
    study_dir, res = study
    with RunningServer(study_dir) as srv:
        c = Client(srv.url)
        for path in ("/admin", "/admin/export.csv", "/admin/report.md", "/admin?token=wrong"):
            assert c.request(path)[0] == 403
        status, body = c.request("/admin/export.csv", headers={"Authorization": f"Bearer {res['token']}"})
        assert status == 200 and body.startswith("rating_id,created_at,rater_id")
        status, body = c.request(f"/admin?token={res['token']}")
        assert status == 200 and "18 items" in body


def test_report_mean_ci_and_count_on_both_scales(study):
    study_dir, _ = study
    con = store.connect(study_dir)
    items = con.execute("SELECT id, system FROM items WHERE task = 'imsm'").fetchall()
    scores = {"melfusion": [8, 9, 10], "tango": [1, 2]}
    for k in range(3):
        store.add_rater(con, f"rater-number-{k:04d}-xxxx")
    # three raters give melfusion's first imsm item 8, 9, 10; two give tango's 1 and 2
    mel = next(i for i, s in items if s == "melfusion")
    tan = next(i for i, s in items if s == "tango")
    for k, v in enumerate(scores["melfusion"]):
        store.record_rating(con, f"rater-number-{k:04d}-xxxx", mel, {"IMSM": v})
    for k, v in enumerate(scores["tango"]):
        store.record_rating(con, f"rater-number-{k:04d}-xxxx", tan, {"IMSM": v})
    with pytest.raises(store.AlreadyRated):
        store.record_rating(con, "rater-number-0000-xxxx", mel, {"IMSM": 3})
    rows = {r["system"]: r for r in report_rows(study_dir)}
    m = rows["melfusion"]
    assert m["n"] == 3 and m["mean"] == pytest.approx(9.0)
    # t(0.975, 2) = 4.3027; sd = 1; half-width = 4.3027 / sqrt(3)
    assert m["ci95_high"] - m["mean"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    assert m["mean_100"] == pytest.approx(800 / 9) and rows["tango"]["mean_100"] == pytest.approx(50 / 9)
    assert math.isnan(summarise([5])[1])
    md, csv_path = write_report(study_dir)
    assert "| imsm | melfusion | IMSM | 3 | 9.00 |" in md
    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert {r["system"] for r in table} == {"melfusion", "tango"} and table[0]["mean_100"]


def test_load_twenty_raters_at_once_every_rating_stored_none_twice(study):
    """20 raters, each rating 6 items as fast as they can, all at the same time over HTTP; each rater
    also replays one rating, which must be refused."""
    import time

    study_dir, _ = study
    n_raters, per_rater = 20, 6
    results, errors = [], []
    barrier = threading.Barrier(n_raters)
    with RunningServer(study_dir) as srv:
        def rater_run():
            try:
                c = Client(srv.url)
                c.start()
                barrier.wait(30)
                rated = []
                for _ in range(per_rater):
                    item, body = c.current_item()
                    t0 = time.perf_counter()
                    status, _ = c.rate(item, scores_for(body, value=5))
                    results.append((status, time.perf_counter() - t0))
                    rated.append(item)
                status, _ = c.rate(rated[0], {"OVL": 5, "REL": 5, "IMSM": 5})
                results.append((status, 0.0))
            except Exception as exc:  # surfaced below
                errors.append(repr(exc))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=rater_run) for _ in range(n_raters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wall = time.perf_counter() - t0
    assert not errors, errors[:3]
    statuses = [s for s, _ in results]
    assert statuses.count(200) == n_raters * per_rater
    assert len(statuses) - statuses.count(200) == n_raters and all(s in (400, 409) for s in statuses if s != 200)
    con = sqlite3.connect(study_dir / "study.sqlite")
    per_item = con.execute("SELECT rater_id, item_id, COUNT(DISTINCT measure), COUNT(*) FROM ratings "
                           "GROUP BY rater_id, item_id").fetchall()
    assert len(per_item) == n_raters * per_rater
    assert all(distinct == count for _, _, distinct, count in per_item)  # none twice
    assert con.execute("SELECT COUNT(DISTINCT rater_id) FROM ratings").fetchone()[0] == n_raters
    lat = sorted(d for s, d in results if s == 200)
    print(f"\nload test: {n_raters} raters x {per_rater} items in {wall:.2f} s; "
          f"{len(per_item)} rated items stored; POST latency median {lat[len(lat) // 2] * 1000:.0f} ms, "
          f"max {lat[-1] * 1000:.0f} ms")


def test_load_thirty_raters_against_the_command_line_server_every_rating_stored_once(study):
    """30 raters at once, 4 ratings each (page, audio, scores), against `melfusion study serve` in
    its own process: every rating answered "stored" is in the database, once."""
    from melfusion.apps.study import load

    study_dir, _ = study
    with load.ServerProcess(study_dir) as srv:
        raters, wall = load.run_raters(srv.url, 30, 4, study_dir=study_dir, timeout_s=300)
    result = load.check(study_dir, raters)
    assert result.ok, result
    assert result.acked == result.stored == 30 * 4 and result.in_doubt == 0
    assert len({r.id for r in raters}) == 30 and all(len(r.acked) == 4 for r in raters)
    lat = load.percentiles([x for r in raters for x in r.post_s])
    print(f"\nload: 30 raters x 4 in {wall:.2f} s; POST p50 {lat['p50'] * 1000:.0f} ms, p95 {lat['p95'] * 1000:.0f} ms")


def test_a_server_killed_mid_load_loses_no_acknowledged_rating_and_raters_resume(study):
    """SIGKILL the server process halfway through 30 raters x 4 ratings and start it again on the
    same port: every rating answered "stored" is in the database, none twice, and each rater's first
    page after the outage is the next item it has not rated, by the database."""
    from melfusion.apps.study import load

    study_dir, _ = study
    acked_at_kill = []
    with load.ServerProcess(study_dir) as srv:
        port = srv.port

        def kill_and_restart(acked_so_far):
            acked_at_kill.append(acked_so_far)
            srv.kill()
            srv.start()

        raters, _ = load.run_raters(srv.url, 30, 4, study_dir=study_dir, fault=kill_and_restart, fault_after=60,
                                    timeout_s=300)
        assert srv.port == port and sum("study at" in line for line in srv.log) == 2  # restarted, same port
    assert 60 <= acked_at_kill[0] < 120  # the kill came in the middle of the load
    result = load.check(study_dir, raters)
    assert result.ok, result
    assert result.acked == 30 * 4 and not result.lost and not result.doubled
    assert result.stored == result.acked + result.in_doubt  # a rating whose answer was lost may be in, once
    resumes = [x for r in raters for x in r.resumes]
    assert resumes and all(shown == expected for shown, expected in resumes)
    con = sqlite3.connect(study_dir / "study.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_study_commands_from_the_command_line(tmp_path, capsys):
    manifest, systems = make_generated_sets(tmp_path / "sets", n_records=2)
    argv = ["study", "create", "--manifest", str(manifest), "--out", str(tmp_path / "st"), "--tasks", "imsm"]
    for name, folder in systems.items():
        argv += ["--system", f"{name}={folder}"]
    assert main(argv) == 0
    assert "4 items" in capsys.readouterr().out
    assert main(argv) == 2  # the folder exists now
    assert "already exists" in capsys.readouterr().err
    assert main(["study", "report", str(tmp_path / "st")]) == 0
    assert (tmp_path / "st" / "report.csv").is_file() and (tmp_path / "st" / "report.md").is_file()
    assert main(["study", "export", str(tmp_path / "st"), "--out", str(tmp_path / "r.csv")]) == 0
    assert main(["study", "report", str(tmp_path / "nope")]) == 2


# -- the admin create page (--sets-root) ---------------------------------------------------------

@pytest.fixture()
def sets_root(tmp_path):
    """root/gen/{melfusion,tango}/<id>.wav and root/gen/manifest.jsonl (3 records), plus traps the
    listing must not show: sets and a manifest outside root reached by symlinks, a hidden folder, a
    set whose one clip is a symlink out of root, and a study folder under root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    manifest, systems = make_generated_sets(root / "gen")
    make_generated_sets(outside)
    (root / "escape").symlink_to(outside / "melfusion", target_is_directory=True)
    (root / "evil.jsonl").symlink_to(outside / "manifest.jsonl")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "rec00.wav").write_bytes((root / "gen" / "tango" / "rec00.wav").read_bytes())
    (root / "linked").mkdir()
    (root / "linked" / "rec00.wav").symlink_to(outside / "melfusion" / "rec00.wav")
    create_study(manifest, systems, root / "old-study")  # its media/ holds WAVs but is no set
    (tmp_path / "studies").mkdir()
    return root, outside


def nonce_of(body):
    m = re.search(r"name='nonce' value='([A-Za-z0-9_-]+)'", body)
    assert m, body[:500]
    return m.group(1)


def create_form(token, nonce, name="new-study", sets=None, manifest="gen/manifest.jsonl", tasks=("ovl_rel", "imsm"),
                **extra):
    sets = {"gen/melfusion": "ours", "gen/tango": "tango"} if sets is None else sets
    data = [("token", token), ("nonce", nonce), ("name", name), ("manifest", manifest)]
    for set_name, system in sets.items():
        data += [("set", set_name), (f"system:{set_name}", system)]
    return data + [("task", t) for t in tasks] + list(extra.items())


def everything_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_create_page_and_post_need_the_token(study, sets_root, tmp_path):
    study_dir, res = study
    with RunningServer(study_dir, sets_root=sets_root[0], studies_root=tmp_path / "studies") as srv:
        c = Client(srv.url)
        for path in ("/admin/create", "/admin/create?token=wrong"):
            status, body = c.request(path)
            assert status == 403 and "nonce" not in body and "gen/melfusion" not in body
        nonce = srv.study.nonce
        for token in ("", "wrong"):
            status, body = c.request("/admin/create", create_form(token, nonce))
            assert status == 403 and "Study created" not in body
        status, body = c.request("/admin/create", create_form("", nonce),
                                 headers={"Authorization": f"Bearer {res['token']}x"})
        assert status == 403
    assert everything_under(tmp_path / "studies") == []


def test_create_page_is_off_without_a_sets_root_and_shows_the_command(study):
    study_dir, res = study
    with RunningServer(study_dir) as srv:
        c = Client(srv.url)
        status, body = c.request(f"/admin/create?token={res['token']}")
        assert status == 200 and "id='off'" in body and "melfusion study create --manifest" in body
        assert "<form" not in body
        nonce = srv.study.nonce
        status, body = c.request("/admin/create", create_form(res["token"], nonce))
        assert status == 403 and "off" in body
    assert not (study_dir.parent / "new-study").exists()


def test_create_page_lists_only_the_sets_and_manifests_under_the_root(study, sets_root, tmp_path):
    from melfusion.apps.study.sources import scan

    root, outside = sets_root
    found = scan(root)
    assert list(found.sets) == ["gen/melfusion", "gen/tango"] and found.clips == {"gen/melfusion": 3, "gen/tango": 3}
    assert list(found.manifests) == ["gen/manifest.jsonl"]
    study_dir, res = study
    with RunningServer(study_dir, sets_root=root, studies_root=tmp_path / "studies") as srv:
        status, body = Client(srv.url).request(f"/admin/create?token={res['token']}")
    assert status == 200
    assert re.findall(r"name='set' value='([^']*)'", body) == ["gen/melfusion", "gen/tango"]
    assert re.findall(r"<option value='([^']*)'>", body) == ["gen/manifest.jsonl"]
    for trap in ("escape", "evil.jsonl", ".hidden", "linked", "old-study", "media", str(outside)):
        assert trap not in body, trap


def test_create_from_two_sets_builds_a_study_beside_the_served_one(study, sets_root, tmp_path):
    study_dir, res = study
    root, _ = sets_root
    with RunningServer(study_dir, sets_root=root) as srv:  # default studies root: the served study's folder
        c = Client(srv.url)
        status, body = c.request(f"/admin/create?token={res['token']}")
        nonce = nonce_of(body)
        status, body = c.request("/admin/create", create_form(res["token"], nonce, name="second_study", title="Two <b>"))
        assert status == 201, body
        assert "id='folder'>second_study<" in body and "id='items'>12<" in body  # 3 records x 2 systems x 2 tasks
        assert "melfusion study serve" in body and "Two <b>" not in body
        token = re.search(r"id='token'>([A-Za-z0-9_-]+)<", body).group(1)
        # The same name again is refused and leaves the first study as it was.
        status, body = c.request("/admin/create", create_form(res["token"], nonce, name="second_study"))
        assert status == 409 and "already exists" in body
    new = tmp_path / "second_study"
    con = sqlite3.connect(new / "study.sqlite")
    assert con.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 12
    assert {r[0] for r in con.execute("SELECT DISTINCT system FROM items")} == {"ours", "tango"}
    assert {r[0] for r in con.execute("SELECT DISTINCT task FROM items")} == {"ovl_rel", "imsm"}
    assert (new / "admin-token").read_text().strip() == token and (new / "admin-token").stat().st_mode & 0o077 == 0
    with RunningServer(new) as srv2:  # the shown token opens the new study's admin page
        status, body = Client(srv2.url).request(f"/admin?token={token}")
        assert status == 200 and "12 items" in body and "Two &lt;b&gt;" in body
    assert not list(tmp_path.glob(".second_study-*"))


def test_create_refuses_any_name_not_in_the_servers_own_listing(study, sets_root, tmp_path):
    study_dir, res = study
    root, outside = sets_root
    studies = tmp_path / "studies"
    with RunningServer(study_dir, sets_root=root, studies_root=studies) as srv:
        c = Client(srv.url)
        nonce = nonce_of(c.request(f"/admin/create?token={res['token']}")[1])
        bad_sets = ["../x", "../outside/melfusion", str(outside / "melfusion"), str(root / "gen" / "tango"),
                    "gen/../gen/tango", "escape", "linked", ".hidden", "old-study/media", "gen/nope", "/etc"]
        for bad in bad_sets:
            status, body = c.request("/admin/create", create_form(res["token"], nonce, sets={bad: "x", "gen/tango": "t"}))
            assert status == 400 and "unknown generated set" in body and "Traceback" not in body, bad
        for bad in ["../outside/manifest.jsonl", str(outside / "manifest.jsonl"), str(root / "gen" / "manifest.jsonl"),
                    "evil.jsonl", "gen/../gen/manifest.jsonl", ""]:
            status, body = c.request("/admin/create", create_form(res["token"], nonce, manifest=bad))
            assert status == 400 and "unknown manifest" in body, bad
    assert everything_under(studies) == []


def test_create_refuses_bad_names_a_wrong_nonce_and_builds_that_fail_leaving_nothing(study, sets_root, tmp_path,
                                                                                     monkeypatch):
    study_dir, res = study
    root, outside = sets_root
    studies = tmp_path / "studies"
    # Clips whose ids the manifest lacks, and a manifest under root whose images lie outside it.
    (root / "other").mkdir()
    (root / "other" / "zzz.wav").write_bytes((root / "gen" / "tango" / "rec00.wav").read_bytes())
    (root / "broken").mkdir()  # clips that fail mid-build, after the hidden work folder exists
    for i in range(3):
        (root / "broken" / f"rec{i:02d}.wav").write_bytes(b"not a wav at all")
    lines = (root / "gen" / "manifest.jsonl").read_text().splitlines()
    (root / "gen" / "escaping.jsonl").write_text("".join(
        line.replace('"images/', '"../../outside/images/') + "\n" for line in lines))
    tok = res["token"]
    with RunningServer(study_dir, sets_root=root, studies_root=studies) as srv:
        c = Client(srv.url)
        nonce = nonce_of(c.request(f"/admin/create?token={tok}")[1])
        for wrong in ("", "x" * 32, nonce[:-1]):
            status, body = c.request("/admin/create", create_form(tok, wrong))
            assert status == 403 and "did not come from this server" in body
        for name in ("../evil", "a/b", "with space", ".hidden", "x" * 65, "", "a\tb", "ünï"):
            status, body = c.request("/admin/create", create_form(tok, nonce, name=name))
            assert status == 400 and "study name" in body, name
        cases = [({"sets": {}}, 400, "at least one generated set"),
                 ({"sets": {"gen/melfusion": "same", "gen/tango": "same"}}, 400, "two sets"),
                 ({"sets": {"gen/melfusion": "<script>alert(1)</script>"}}, 400, "system name"),
                 ({"tasks": ()}, 400, "choose tasks"),
                 ({"tasks": ("karaoke",)}, 400, "choose tasks"),
                 ({"limit": "0"}, 400, "limit"),
                 ({"limit": "two"}, 400, "limit"),
                 ({"sets": {"gen/melfusion": "a", "other": "b"}}, 400, "every system"),
                 ({"manifest": "gen/escaping.jsonl"}, 400, "outside the sets root"),
                 ({"split": "train"}, 400, "every system"),
                 ({"sets": {"gen/melfusion": "a", "broken": "b"}}, 400, "not a readable WAV")]
        for kwargs, want_status, want_text in cases:
            status, body = c.request("/admin/create", create_form(tok, nonce, **kwargs))
            assert status == want_status and want_text in body, (kwargs, status, body[-400:])
            assert "<script>alert" not in body and "Traceback" not in body
        assert everything_under(studies) == []
        # Something unexpected during the build: 500 with a message, no traceback, nothing left.
        import melfusion.apps.study.sources as sources

        def boom(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(sources, "create_study", boom)
        status, body = c.request("/admin/create", create_form(tok, nonce))
        assert status == 500 and "the build failed on the server" in body and "disk full" not in body
        monkeypatch.undo()
        assert everything_under(studies) == []
        # With a limit and a split that match, the same server builds.
        status, body = c.request("/admin/create", create_form(tok, nonce, name="small", limit="2", split="test"))
        assert status == 201 and "id='items'>8<" in body
    assert [p.name for p in studies.iterdir()] == ["small"]


def test_study_serve_refuses_a_sets_root_that_is_not_a_folder(study, tmp_path, capsys):
    study_dir, _ = study
    assert main(["study", "serve", str(study_dir), "--sets-root", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "--sets-root is not a folder" in capsys.readouterr().err
