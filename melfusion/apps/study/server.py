"""`melfusion study serve`: the rating pages, a small standard-library HTTP server over SQLite.

Raters get an anonymous id in a cookie and the items in their own random order, with system
names hidden (items and media files have opaque names). Only the study's own media files are
ever served, looked up by name in the database; a path in a request is never opened. Admin
pages (overview, report, export, create) need the study's admin token (`?token=` or a Bearer header).

`/admin/create` builds a new study from the browser, only when the server was started with a sets
root (`--sets-root ROOT`): the page lists what the server itself finds under ROOT and a request can
only pick from that list by name (see `sources.py`); the form also carries a per-server nonce.
"""
from __future__ import annotations

import hmac
import html
import re
import secrets
import shlex
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
from melfusion.apps.study.sources import Refused, build_from_root, scan
from melfusion.errors import MelFusionError

COOKIE = "melfusion_rater"
RATER_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MEDIA_RE = re.compile(r"^([0-9a-f]{16})\.(png|wav)$")
MEDIA_TYPES = {"png": "image/png", "wav": "audio/wav"}
MAX_BODY = 16 * 1024
MAX_CREATE_BODY = 256 * 1024  # the create form sends a system name for every listed set
MAX_TITLE = 200
DEFAULT_TITLE = "Music for images and text: a listening study"
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
form.create label{display:block;margin:.5em 0} code{background:#f4f1ea;padding:0 .25em;word-break:break-all}
"""


def page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>").encode()


def _folder(path, option: str) -> Path:
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise MelFusionError(f"{option} is not a folder: {path}")
    return folder


class StudyApp:
    """What the handler needs: the study folder, its metadata and its database."""

    def __init__(self, study_dir, sets_root=None, studies_root=None):
        self.dir = Path(study_dir).resolve()
        self.meta = load_meta(self.dir)
        self.media = self.dir / "media"
        self._local = threading.local()
        store.connect(self.dir).close()  # fail now, not at the first request
        # Creating from the browser: off unless whoever starts the server names a sets root.
        self.sets_root = _folder(sets_root, "--sets-root") if sets_root is not None else None
        self.studies_root = _folder(studies_root, "--studies-root") if studies_root is not None else self.dir.parent
        # A page from this very server run must be the source of a create POST (a CSRF-style check).
        self.nonce = secrets.token_urlsafe(24)
        self.create_lock = threading.Lock()  # one build at a time: two requests for one name cannot race

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
            if length > (MAX_CREATE_BODY if path == "/admin/create" else MAX_BODY) or length < 0:
                return self.message(413, "request too large")
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            if path == "/start":
                return self.start()
            if path == "/rate":
                return self.rate_post(form)
            if path == "/admin/create":
                return self.create_post(form)
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
        if path == "/admin/create":
            return self.create_page(self.admin_token(query))
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
                "<code>/admin/export.csv</code>, <code>/admin/report.csv</code>, <code>/admin/report.md</code>. "
                "A new study from generated sets: <code>/admin/create</code>.</p>")
        self.send(200, page("Admin", body))

    # -- admin: create a study -----------------------------------------------------------------
    def create_page(self, token: str, error: str | None = None, status: int = 200):
        """The create form over the server's own listing of the sets root, or, with no sets root,
        the command line that does the same (the server then reads nothing it was not told to)."""
        parts = ["<h1>Create a study</h1>"]
        if error:
            parts.append(f"<p class='error' id='message'>{html.escape(error)}</p>")
        if self.app.sets_root is None:
            parts.append(_create_off_html(self.app.studies_root))
            return self.send(status, page("Create a study", "".join(parts)))
        found = scan(self.app.sets_root)
        parts.append(f"<p>From the generated sets (folders of <code>&lt;id&gt;.wav</code>) and manifests "
                     f"(<code>*.jsonl</code>) under <code>{html.escape(str(found.root))}</code>. The new study "
                     f"goes to <code>{html.escape(str(self.app.studies_root))}/NAME</code>.</p>")
        if found.truncated:
            parts.append("<p class='error'>The sets root holds too many files; only part of it is listed.</p>")
        if not found.sets or not found.manifests:
            parts.append("<p class='error' id='empty'>No generated set or no manifest found there.</p>")
            return self.send(status, page("Create a study", "".join(parts)))
        parts.append(_create_form_html(found, token, self.app.nonce))
        self.send(status, page("Create a study", "".join(parts)))

    def create_post(self, form):
        token = self.admin_token(form)
        if not self.app.token_ok(token):
            return self.message(403, "the admin pages need the study's admin token", link="/")
        nonce = (form.get("nonce") or [""])[0]
        if not hmac.compare_digest(nonce.encode(), self.app.nonce.encode()):
            return self.create_page(token, "this form did not come from this server's create page (or the server "
                                           "was restarted since): reload the page and try again", 403)
        if self.app.sets_root is None:
            return self.create_page(token, "creating a study from the browser is off on this server", 403)
        try:
            choice = _create_choice(form)
            with self.app.create_lock:
                res = build_from_root(self.app.sets_root, self.app.studies_root, **choice)
        except Refused as exc:
            return self.create_page(token, str(exc), exc.status)
        except MelFusionError as exc:  # the build's own checks: ids not in the manifest, unreadable files ...
            return self.create_page(token, f"the study was not created: {exc}", 400)
        except Exception as exc:  # never a traceback to the browser; create_study left nothing behind
            print(f"study server: create: {type(exc).__name__}: {exc}", file=sys.stderr)
            return self.create_page(token, "the study was not created: the build failed on the server "
                                           "(its log says why)", 500)
        self.send(201, page("Study created", _created_html(res)))


def _first(form, key: str) -> str:
    return (form.get(key) or [""])[0].strip()


def _create_choice(form) -> dict:
    """The create form's fields as `build_from_root` arguments; names stay names (they are looked
    up there, never opened here)."""
    chosen = {s: _first(form, f"system:{s}") for s in dict.fromkeys(form.get("set") or [])}
    limit = _first(form, "limit")
    if limit and not (limit.isdigit() and int(limit) >= 1):
        raise Refused("the limit must be a whole number of records, at least 1")
    title = _first(form, "title") or DEFAULT_TITLE
    if len(title) > MAX_TITLE:
        raise Refused(f"the title must be at most {MAX_TITLE} characters")
    return {"name": _first(form, "name"), "chosen": chosen, "manifest": _first(form, "manifest"),
            "tasks": list(dict.fromkeys(form.get("task") or [])), "split": _first(form, "split") or None,
            "limit": int(limit) if limit else None, "title": title}


def _default_system(set_name: str) -> str:
    """A set's folder name made into a system name, as the form's suggestion."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", set_name.rsplit("/", 1)[-1])[:64].lstrip("._-") or "system"


def _create_form_html(found, token: str, nonce: str) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td><input type='checkbox' name='set' value='{esc(name)}' id='set-{i}'></td>"
        f"<td><label for='set-{i}'><code>{esc(name)}</code></label></td><td>{found.clips[name]}</td>"
        f"<td><input name='system:{esc(name)}' value='{esc(_default_system(name))}' id='system-{i}' "
        f"maxlength='64' aria-label='system name for {esc(name)}'></td></tr>"
        for i, name in enumerate(found.sets))
    manifests = "".join(f"<option value='{esc(m)}'>{esc(m)}</option>" for m in found.manifests)
    tasks = "".join(f"<label><input type='checkbox' name='task' value='{t}' checked> {t}: "
                    f"{esc(INSTRUCTIONS[t].split('.')[0])}</label>" for t in store.TASKS)
    return ("<form class='create' method='post' action='/admin/create'>"
            f"<input type='hidden' name='token' value='{esc(token)}'><input type='hidden' name='nonce' value='{esc(nonce)}'>"
            "<label>Study name (letters, digits, - and _; it becomes the folder name) "
            "<input name='name' id='name' required maxlength='64' pattern='[A-Za-z0-9_\\-]{1,64}'></label>"
            "<fieldset><legend>Generated sets: tick each system to compare, and name it</legend>"
            f"<table><tr><th></th><th>set</th><th>clips</th><th>system name</th></tr>{rows}</table></fieldset>"
            f"<label>Manifest the sets were made from <select name='manifest' id='manifest'>{manifests}</select></label>"
            f"<fieldset><legend>Tasks</legend>{tasks}</fieldset>"
            "<label>Split (only records of this split; empty: all) <input name='split' id='split'></label>"
            "<label>Limit (at most this many records; empty: all) <input name='limit' id='limit' type='number' min='1'></label>"
            f"<label>Title <input name='title' id='title' maxlength='{MAX_TITLE}' value='{esc(DEFAULT_TITLE)}' size='50'></label>"
            "<button type='submit' id='create'>Create the study</button></form>")


def _create_off_html(studies_root: Path) -> str:
    example = (f"melfusion study create --manifest MANIFEST.jsonl --system NAME=SET_DIR --system NAME2=SET_DIR2 "
               f"--out {shlex.quote(str(studies_root))}/NEW_STUDY [--tasks ovl_rel,text,imsm] [--split test] "
               "[--limit 50] [--title TITLE]")
    return ("<p id='off'>Creating a study from the browser is off on this server: it was started without "
            "<code>--sets-root ROOT</code>, the folder of generated sets it may read. The same from the command "
            f"line:</p><p><code id='command'>{html.escape(example)}</code></p>"
            "<p>or restart the server with <code>melfusion study serve DIR --sets-root ROOT</code>.</p>")


def _created_html(res: dict) -> str:
    esc = html.escape
    out = res["out"]
    per_task = ", ".join(f"{k} {v}" for k, v in res["per_task"].items())
    return ("<h1>Study created</h1>"
            f"<p id='result'>Folder <code id='folder'>{esc(out.name)}</code> in <code>{esc(str(out.parent))}</code>: "
            f"<span id='items'>{res['items']}</span> items ({esc(per_task)}) from {res['records']} records and "
            f"the systems {esc(', '.join(res['systems']))}.</p>"
            f"<p>Serve it (on a port other than this server's): <code id='serve-command'>melfusion study serve "
            f"{esc(shlex.quote(str(out)))} --port PORT</code></p>"
            "<p>Its admin token, shown only this once (it is also in "
            f"<code>{esc(str(res['token_file']))}</code>, readable by the server's user only): "
            f"<code id='token'>{esc(res['token'])}</code></p>")


class StudyServer(ThreadingHTTPServer):
    """socketserver's listen backlog is 5; a class of raters pressing "submit" together on a busy
    machine overflows that and some get their connection reset. 128 queues them instead."""

    request_queue_size = 128
    daemon_threads = True


def make_server(study_dir, host: str = "127.0.0.1", port: int = 8765, sets_root=None,
                studies_root=None) -> ThreadingHTTPServer:
    app = StudyApp(study_dir, sets_root=sets_root, studies_root=studies_root)
    handler = type("StudyHandler", (Handler,), {"app": app})
    try:
        server = StudyServer((host, port), handler)
    except OSError as exc:
        raise MelFusionError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return server


def serve(study_dir, host: str = "127.0.0.1", port: int = 8765, sets_root=None, studies_root=None) -> None:
    server = make_server(study_dir, host, port, sets_root=sets_root, studies_root=studies_root)
    if host not in LOOPBACK:
        print(f"note: listening on {host}, reachable from other machines", file=sys.stderr)
    app = server.RequestHandlerClass.app
    if app.sets_root is not None:
        print(f"note: /admin/create may build studies in {app.studies_root} from the sets under {app.sets_root}",
              file=sys.stderr)
    print(f"study at http://{host}:{server.server_address[1]}/  (admin: /admin?token=...; Ctrl-C stops)",
          file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
