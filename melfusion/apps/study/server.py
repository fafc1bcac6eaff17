"""`melfusion study serve`: the rating pages, a small standard-library HTTP server over SQLite.

Raters get an anonymous id in a cookie and the items in their own random order, with system
names hidden (items and media files have opaque names). Only the study's own media files are
ever served, looked up by name in the database; a path in a request is never opened. Admin
pages (overview, report, export) need the study's admin token (`?token=` or a Bearer header).
"""
from __future__ import annotations

import hmac
import html
import re
import secrets
import sys
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from melfusion.apps.study import store
from melfusion.apps.study.build import load_meta, token_hash
from melfusion.apps.study.report import export_csv, report_rows, to_csv, to_markdown
from melfusion.errors import MelFusionError

COOKIE = "melfusion_rater"
RATER_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MEDIA_RE = re.compile(r"^([0-9a-f]{16})\.(png|wav)$")
MEDIA_TYPES = {"png": "image/png", "wav": "audio/wav"}
MAX_BODY = 16 * 1024
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; "
                               "media-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

INSTRUCTIONS = {
    "ovl_rel": "Look at the image, read the text, and listen to the music. Rate the overall quality of the "
               "music (OVL) and how relevant it is to the image and the text together (REL), each from 1 "
               "(lowest) to 10 (highest).",
    "text": "Read the text and listen to the music. Rate the overall quality of the music (OVL) and how "
            "relevant it is to the text (REL), each from 1 (lowest) to 10 (highest).",
    "imsm": "Look at the image and listen to the music. How well do they go together? Rate from 1 (lowest) "
            "to 10 (highest): the higher the score, the more the music matches the image.",
}
MEASURE_LABELS = {"OVL": "Overall quality of the music (OVL)", "REL": "Relevance to the input (REL)",
                  "IMSM": "Image-music similarity (IMSM)"}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} .caption{font-size:1.15em;background:#f4f1ea;padding:.8em 1em;border-radius:6px}
img.stim{max-width:100%;max-height:420px;display:block;margin:1em 0;border-radius:6px}
audio{width:100%;margin:1em 0} fieldset{border:1px solid #ccc;border-radius:6px;margin:1em 0}
.scale label{display:inline-block;margin:.2em .35em;text-align:center}
.scale input{display:block;margin:0 auto} .progress{color:#666} .error{color:#a00;font-weight:bold}
button{font-size:1.05em;padding:.5em 1.4em} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.3em .6em}
"""


def page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>").encode()


class StudyApp:
    """What the handler needs: the study folder, its metadata and its database."""

    def __init__(self, study_dir):
        self.dir = Path(study_dir).resolve()
        self.meta = load_meta(self.dir)
        self.media = self.dir / "media"
        self._local = threading.local()
        store.connect(self.dir).close()  # fail now, not at the first request

    def db(self):
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = store.connect(self.dir)
        return con

    def token_ok(self, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(token_hash(token), self.meta["admin_token_sha256"])


class Handler(BaseHTTPRequestHandler):
    server_version = "melfusion-study"
    sys_version = ""
    app: StudyApp

    def log_message(self, fmt, *args):  # quiet: no request log on stderr
        pass

    # -- responses ---------------------------------------------------------------------------
    def send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", headers=None):
        self.send_response(status)
        for k, v in {**HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def message(self, status: int, text: str, link: str = "/rate"):
        body = f"<h1>{html.escape(HTTPStatus(status).phrase)}</h1><p class='error' id='message'>{html.escape(text)}</p>" \
               f"<p><a href='{link}'>Continue</a></p>"
        self.send(status, page(HTTPStatus(status).phrase, body))

    def redirect(self, where: str, headers=None):
        self.send(HTTPStatus.SEE_OTHER, b"", headers={"Location": where, **(headers or {})})

    # -- request helpers ---------------------------------------------------------------------
    def rater(self) -> str | None:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except Exception:
            return None
        value = jar[COOKIE].value if COOKIE in jar else None
        if value and RATER_RE.match(value) and store.rater_exists(self.app.db(), value):
            return value
        return None

    def admin_token(self, query) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        return (query.get("token") or [None])[0]

    # -- routes ------------------------------------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            path = url.path
            if path == "/":
                return self.welcome()
            if path == "/rate":
                return self.rate_page()
            if path.startswith("/media/"):
                return self.media(path[len("/media/"):])
            if path == "/admin" or path.startswith("/admin/"):
                return self.admin(path, query)
            return self.message(404, "no such page", link="/")
        except Exception as exc:  # never a traceback to the browser
            print(f"study server: {type(exc).__name__}: {exc}", file=sys.stderr)
            return self.message(500, "something went wrong on the server", link="/")

    def do_POST(self):
        try:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY or length < 0:
                return self.message(413, "request too large")
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            if path == "/start":
                return self.start()
            if path == "/rate":
                return self.rate_post(form)
            return self.message(404, "no such page", link="/")
        except Exception as exc:
            print(f"study server: {type(exc).__name__}: {exc}", file=sys.stderr)
            return self.message(500, "something went wrong on the server", link="/")

    def welcome(self):
        meta = self.app.meta
        body = (f"<h1>{html.escape(meta['title'])}</h1>"
                "<p>You will hear short pieces of music, some with an image, a text, or both. Rate each one "
                "as asked, from 1 (lowest) to 10 (highest). There are no right answers; please listen to the "
                "whole clip before rating. Your ratings are stored with an anonymous id, nothing else.</p>"
                "<form method='post' action='/start'><button id='start' type='submit'>Start</button></form>")
        self.send(200, page(meta["title"], body))

    def start(self):
        rater = self.rater()
        headers = {}
        if rater is None:
            rater = secrets.token_urlsafe(18)
            store.add_rater(self.app.db(), rater)
            headers["Set-Cookie"] = (f"{COOKIE}={rater}; Path=/; HttpOnly; SameSite=Strict; "
                                     f"Max-Age={365 * 24 * 3600}")
        self.redirect("/rate", headers)

    def rate_page(self, error: str | None = None, status: int = 200):
        rater = self.rater()
        if rater is None:
            return self.redirect("/")
        item, done, total = store.next_item(self.app.db(), rater)
        if item is None:
            body = (f"<h1>Thank you</h1><p id='done'>You have rated all {total} items. You can close this page.</p>")
            return self.send(200, page("Thank you", body))
        task = item["task"]
        parts = [f"<p class='progress'>Item {done + 1} of {total}</p>",
                 f"<h1>{'Rate the music' if task != 'imsm' else 'Does the music match the image?'}</h1>",
                 f"<p>{html.escape(INSTRUCTIONS[task])}</p>"]
        if error:
            parts.append(f"<p class='error' id='message'>{html.escape(error)}</p>")
        if item["image"]:
            parts.append(f"<img class='stim' src='/media/{item['image']}' alt='the image'>")
        if item["caption"]:
            parts.append(f"<p class='caption' id='caption'>{html.escape(item['caption'])}</p>")
        parts.append(f"<audio controls preload='auto' src='/media/{item['audio']}'></audio>")
        parts.append(f"<form method='post' action='/rate'><input type='hidden' name='item' value='{item['id']}'>")
        for m in store.TASKS[task]:
            radios = "".join(f"<label>{s}<input type='radio' name='{m}' value='{s}' required></label>"
                             for s in range(store.SCORE_MIN, store.SCORE_MAX + 1))
            parts.append(f"<fieldset class='scale'><legend>{html.escape(MEASURE_LABELS[m])}</legend>{radios}</fieldset>")
        parts.append("<button type='submit' id='submit'>Submit rating</button></form>")
        self.send(status, page("Rate", "".join(parts)))

    def rate_post(self, form):
        rater = self.rater()
        if rater is None:
            return self.message(403, "start the study first", link="/")
        item_id = (form.get("item") or [""])[0]
        item = store.get_item(self.app.db(), item_id) if re.fullmatch(r"[0-9a-f]{16}", item_id) else None
        if item is None:
            return self.message(400, "unknown item")
        scores = {m: (form.get(m) or [""])[0] for m in store.TASKS[item["task"]]}
        try:
            store.record_rating(self.app.db(), rater, item_id, scores)
        except store.AlreadyRated as exc:
            return self.message(409, str(exc))
        except MelFusionError as exc:
            return self.message(400, str(exc))
        self.redirect("/rate")

    def media(self, name: str):
        m = MEDIA_RE.fullmatch(name)
        if not m:
            return self.message(404, "no such file", link="/")
        known = self.app.db().execute("SELECT 1 FROM items WHERE image = ? OR audio = ? LIMIT 1", (name, name)).fetchone()
        path = self.app.media / name
        if not known or not path.is_file():
            return self.message(404, "no such file", link="/")
        self.send(200, path.read_bytes(), ctype=MEDIA_TYPES[m.group(2)], headers={"Cache-Control": "private, max-age=3600"})

    def admin(self, path: str, query):
        if not self.app.token_ok(self.admin_token(query)):
            return self.message(403, "the admin pages need the study's admin token", link="/")
        if path == "/admin/export.csv":
            return self.send(200, export_csv(self.app.dir).encode(), ctype="text/csv; charset=utf-8",
                             headers={"Content-Disposition": "attachment; filename=ratings.csv"})
        if path == "/admin/report.csv":
            return self.send(200, to_csv(report_rows(self.app.dir)).encode(), ctype="text/csv; charset=utf-8")
        if path == "/admin/report.md":
            return self.send(200, to_markdown(report_rows(self.app.dir), self.app.meta["title"]).encode(),
                             ctype="text/markdown; charset=utf-8")
        if path != "/admin":
            return self.message(404, "no such page", link="/")
        con = self.app.db()
        counts = {k: con.execute(f"SELECT COUNT(*) FROM {k}").fetchone()[0] for k in ("items", "raters", "ratings")}
        rows = "".join(f"<tr><td>{html.escape(r['task'])}</td><td>{html.escape(r['system'])}</td><td>{r['measure']}</td>"
                       f"<td>{r['n']}</td><td>{r['mean']:.2f}</td><td>{r['mean_100']:.1f}</td></tr>"
                       for r in report_rows(self.app.dir))
        body = (f"<h1>{html.escape(self.app.meta['title'])}: admin</h1>"
                f"<p>{counts['items']} items, {counts['raters']} raters, {counts['ratings']} ratings; systems: "
                f"{html.escape(', '.join(self.app.meta['systems']))}.</p>"
                "<table><tr><th>task</th><th>system</th><th>measure</th><th>n</th><th>mean 1-10</th><th>mean 0-100</th></tr>"
                f"{rows}</table><p>Downloads (send the token as a Bearer header or ?token=): "
                "<code>/admin/export.csv</code>, <code>/admin/report.csv</code>, <code>/admin/report.md</code>.</p>")
        self.send(200, page("Admin", body))


def make_server(study_dir, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    app = StudyApp(study_dir)
    handler = type("StudyHandler", (Handler,), {"app": app})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise MelFusionError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    return server


def serve(study_dir, host: str = "127.0.0.1", port: int = 8765) -> None:
    server = make_server(study_dir, host, port)
    if host not in LOOPBACK:
        print(f"note: listening on {host}, reachable from other machines", file=sys.stderr)
    print(f"study at http://{host}:{server.server_address[1]}/  (admin: /admin?token=...; Ctrl-C stops)",
          file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
