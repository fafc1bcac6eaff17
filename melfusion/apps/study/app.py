"""The study's web application (Starlette): rating pages, the study's media, the admin pages.

Raters get an anonymous id in a cookie and the items in their own random order, with system
names hidden (items and media files have opaque names). Only the study's own media files are
ever served, looked up by name in the database; a path in a request is never opened. Admin
pages (overview, report, export, create) need the study's admin token (`?token=` or a Bearer header).

`/admin/create` builds a new study from the browser, only when the server was started with a sets
root (`--sets-root ROOT`): the page lists what the server itself finds under ROOT and a request can
only pick from that list by name (see `sources.py`); the form also carries a per-server nonce.

Handlers are plain functions, so Starlette runs them in its thread pool: SQLite and the build
block, and the event loop must keep accepting raters meanwhile. Only reading a form is async.
"""
from __future__ import annotations

import hmac
import re
import secrets
import shlex
import sys
import threading
from http import HTTPStatus
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from melfusion.apps.study import store
from melfusion.apps.study.build import load_meta, token_hash
from melfusion.apps.study.report import export_csv, report_rows, to_csv, to_markdown
from melfusion.apps.study.sources import Refused, build_from_root, scan
from melfusion.errors import MelFusionError

COOKIE = "melfusion_rater"
RATER_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
ITEM_RE = re.compile(r"^[0-9a-f]{16}$")
MEDIA_RE = re.compile(r"^([0-9a-f]{16})\.(png|wav)$")
MEDIA_TYPES = {"png": "image/png", "wav": "audio/wav"}
MAX_BODY = 16 * 1024
MAX_CREATE_BODY = 256 * 1024  # the create form sends a system name for every listed set
MAX_TITLE = 200
DEFAULT_TITLE = "Music for images and text: a listening study"

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
ERROR_TEXTS = {404: "no such page", 405: "this page does not take that kind of request", 413: "request too large"}

# Autoescaping on for every template, whatever its name; a missing variable is an error, not "".
TEMPLATES = Jinja2Templates(env=jinja2.Environment(
    loader=jinja2.PackageLoader("melfusion.apps.study", "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True))


def _folder(path, option: str) -> Path:
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise MelFusionError(f"{option} is not a folder: {path}")
    return folder


def page(request: Request, template: str, status: int = 200, **context) -> Response:
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status)


def message(request: Request, status: int, text: str, link: str = "/rate", headers=None) -> Response:
    response = page(request, "message.html", status, phrase=HTTPStatus(status).phrase, text=text, link=link)
    response.headers.update(headers or {})
    return response


def see_other(where: str) -> Response:
    return RedirectResponse(where, status_code=303)


async def read_form(request: Request, limit: int) -> FormData:
    """The request's form, refusing (413) a body over `limit` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413)
    body = bytearray()
    async for chunk in request.stream():  # also bounds a chunked body, which declares no length
        body += chunk
        if len(body) > limit:
            raise HTTPException(413)

    async def replay():
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    # Starlette parses the form from a request's stream, which is spent: hand it the bytes read.
    return await Request(request.scope, replay).form(max_files=0, max_fields=limit // 2)


def first(form, key: str) -> str:
    return str(form.get(key) or "").strip()


def values(form, key: str) -> list[str]:
    """A repeated field's values, each once, blanks dropped (as a browser's unticked boxes are)."""
    return list(dict.fromkeys(str(v) for v in form.getlist(key) if v))


class SecurityHeaders:
    """ASGI wrapper adding HEADERS to every response that does not set its own (media set their
    Cache-Control). It wraps the whole application, so error pages get them too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                headers = MutableHeaders(scope=msg)
                for key, value in HEADERS.items():
                    headers.setdefault(key, value)
            await send(msg)

        await self.app(scope, receive, send_with_headers)


class StudyApp:
    """The served study: its folder, metadata and database, and the request handlers."""

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
        # One writer at a time in this process. SQLite would serialise writers anyway, but its busy
        # handler waits by sleeping in growing steps; a lock hands over at once, so a burst of ratings
        # queues briefly instead of stretching the slowest request.
        self.write_lock = threading.Lock()

    def db(self):
        """This thread's connection (sqlite3 connections are not shared between threads here)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = store.connect(self.dir)
        return con

    def token_ok(self, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(token_hash(token), self.meta["admin_token_sha256"])

    def rater(self, request: Request) -> str | None:
        value = request.cookies.get(COOKIE)
        if value and RATER_RE.match(value) and store.rater_exists(self.db(), value):
            return value
        return None

    @staticmethod
    def admin_token(request: Request, form=None) -> str | None:
        """The Bearer header, else `token` from the form (POST) or the query string (GET)."""
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        return (form if form is not None else request.query_params).get("token")

    def application(self) -> SecurityHeaders:
        admin = self.admin_only
        routes = [
            Route("/", self.welcome),
            Route("/start", self.start, methods=["POST"]),
            Route("/rate", self.rate_page),
            Route("/rate", self.rate_post, methods=["POST"]),
            Route("/media/{name}", self.media_file),
            Route("/admin", admin(self.overview)),
            Route("/admin/export.csv", admin(self.export)),
            Route("/admin/report.csv", admin(self.report_csv)),
            Route("/admin/report.md", admin(self.report_md)),
            Route("/admin/create", admin(self.create_page)),
            Route("/admin/create", self.create_post, methods=["POST"]),
            # Without the token even an unknown admin page is 403, so the listing of them stays private.
            Route("/admin/{rest:path}", admin(lambda request: message(request, 404, "no such page", link="/"))),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: self.http_error, Exception: self.crash})
        app.router.redirect_slashes = False  # a path is either a page or 404, never a redirect to a guess
        return SecurityHeaders(app)

    # -- errors ------------------------------------------------------------------------------------
    def http_error(self, request: Request, exc: HTTPException) -> Response:
        return message(request, exc.status_code, ERROR_TEXTS.get(exc.status_code, exc.detail), link="/",
                       headers=exc.headers)

    def crash(self, request: Request, exc: Exception) -> Response:
        # Never a traceback to the browser; uvicorn logs it on the server's console.
        return message(request, 500, "something went wrong on the server", link="/")

    # -- raters ------------------------------------------------------------------------------------
    def welcome(self, request: Request) -> Response:
        return page(request, "welcome.html", title=self.meta["title"])

    async def start(self, request: Request) -> Response:
        await read_form(request, MAX_BODY)  # nothing is read from it; the size rule holds for every POST
        return await run_in_threadpool(self._start, request)

    def _start(self, request: Request) -> Response:
        rater = self.rater(request)
        response = see_other("/rate")
        if rater is None:
            rater = secrets.token_urlsafe(18)
            with self.write_lock:
                store.add_rater(self.db(), rater)
            response.set_cookie(COOKIE, rater, max_age=365 * 24 * 3600, path="/", httponly=True, samesite="strict")
        return response

    def rate_page(self, request: Request) -> Response:
        rater = self.rater(request)
        if rater is None:
            return see_other("/")
        item, done, total = store.next_item(self.db(), rater)
        if item is None:
            return page(request, "done.html", total=total)
        measures = [(m, MEASURE_LABELS[m]) for m in store.TASKS[item["task"]]]
        return page(request, "rate.html", item=item, done=done, total=total, instructions=INSTRUCTIONS[item["task"]],
                    measures=measures, scores=range(store.SCORE_MIN, store.SCORE_MAX + 1))

    async def rate_post(self, request: Request) -> Response:
        form = await read_form(request, MAX_BODY)
        return await run_in_threadpool(self._rate, request, form)

    def _rate(self, request: Request, form) -> Response:
        rater = self.rater(request)
        if rater is None:
            return message(request, 403, "start the study first", link="/")
        item_id = first(form, "item")
        item = store.get_item(self.db(), item_id) if ITEM_RE.match(item_id) else None
        if item is None:
            return message(request, 400, "unknown item")
        scores = {m: first(form, m) for m in store.TASKS[item["task"]]}
        try:
            with self.write_lock:
                store.record_rating(self.db(), rater, item_id, scores)
        except store.AlreadyRated as exc:
            return message(request, 409, str(exc))
        except MelFusionError as exc:
            return message(request, 400, str(exc))
        return see_other("/rate")  # only now, after the commit: a success answer means stored

    def media_file(self, request: Request) -> Response:
        """A study file by its opaque name; FileResponse answers Range requests (206, 416), so an
        audio player can seek."""
        name = request.path_params["name"]
        m = MEDIA_RE.fullmatch(name)
        if not m:
            return message(request, 404, "no such file", link="/")
        known = self.db().execute("SELECT 1 FROM items WHERE image = ? OR audio = ? LIMIT 1", (name, name)).fetchone()
        path = self.media / name
        if not known or not path.is_file():
            return message(request, 404, "no such file", link="/")
        return FileResponse(path, media_type=MEDIA_TYPES[m.group(2)],
                            headers={"Cache-Control": "private, max-age=3600"})

    # -- admin -------------------------------------------------------------------------------------
    def admin_only(self, handler):
        def guarded(request: Request) -> Response:
            if not self.token_ok(self.admin_token(request)):
                return message(request, 403, "the admin pages need the study's admin token", link="/")
            return handler(request)
        return guarded

    def overview(self, request: Request) -> Response:
        con = self.db()
        counts = {k: con.execute(f"SELECT COUNT(*) FROM {k}").fetchone()[0] for k in ("items", "raters", "ratings")}
        return page(request, "admin.html", title=self.meta["title"], counts=counts, systems=self.meta["systems"],
                    rows=report_rows(self.dir))

    def export(self, request: Request) -> Response:
        return Response(export_csv(self.dir), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": "attachment; filename=ratings.csv"})

    def report_csv(self, request: Request) -> Response:
        return Response(to_csv(report_rows(self.dir)), media_type="text/csv; charset=utf-8")

    def report_md(self, request: Request) -> Response:
        return Response(to_markdown(report_rows(self.dir), self.meta["title"]),
                        media_type="text/markdown; charset=utf-8")

    # -- admin: create a study -------------------------------------------------------------------
    def create_page(self, request: Request, token: str | None = None, error: str | None = None,
                    status: int = 200) -> Response:
        """The create form over the server's own listing of the sets root, or, with no sets root,
        the command line that does the same (the server then reads nothing it was not told to)."""
        token = token if token is not None else self.admin_token(request)
        if self.sets_root is None:
            return page(request, "create.html", status, error=error, command=_create_command(self.studies_root))
        found = scan(self.sets_root)
        sets = [{"name": name, "clips": found.clips[name], "system": _default_system(name)} for name in found.sets]
        tasks = [(t, INSTRUCTIONS[t].split(".")[0]) for t in store.TASKS]
        return page(request, "create.html", status, error=error, command=None, root=found.root,
                    studies_root=self.studies_root, truncated=found.truncated, sets=sets,
                    manifests=list(found.manifests), token=token, nonce=self.nonce, tasks=tasks,
                    max_title=MAX_TITLE, default_title=DEFAULT_TITLE)

    async def create_post(self, request: Request) -> Response:
        form = await read_form(request, MAX_CREATE_BODY)
        return await run_in_threadpool(self._create, request, form)

    def _create(self, request: Request, form) -> Response:
        token = self.admin_token(request, form)
        if not self.token_ok(token):
            return message(request, 403, "the admin pages need the study's admin token", link="/")
        if not hmac.compare_digest(first(form, "nonce").encode(), self.nonce.encode()):
            return self.create_page(request, token, "this form did not come from this server's create page (or the "
                                    "server was restarted since): reload the page and try again", 403)
        if self.sets_root is None:
            return self.create_page(request, token, "creating a study from the browser is off on this server", 403)
        try:
            choice = _create_choice(form)
            with self.create_lock:
                res = build_from_root(self.sets_root, self.studies_root, **choice)
        except Refused as exc:
            return self.create_page(request, token, str(exc), exc.status)
        except MelFusionError as exc:  # the build's own checks: ids not in the manifest, unreadable files ...
            return self.create_page(request, token, f"the study was not created: {exc}", 400)
        except Exception as exc:  # never a traceback to the browser; create_study left nothing behind
            print(f"study server: create: {type(exc).__name__}: {exc}", file=sys.stderr)
            return self.create_page(request, token, "the study was not created: the build failed on the server "
                                    "(its log says why)", 500)
        return page(request, "created.html", 201, out=res["out"], out_quoted=shlex.quote(str(res["out"])),
                    items=res["items"], per_task=", ".join(f"{k} {v}" for k, v in res["per_task"].items()),
                    records=res["records"], systems=res["systems"], token=res["token"], token_file=res["token_file"])


def _create_choice(form) -> dict:
    """The create form's fields as `build_from_root` arguments; names stay names (they are looked
    up there, never opened here)."""
    chosen = {s: first(form, f"system:{s}") for s in values(form, "set")}
    limit = first(form, "limit")
    # ASCII digits only: "²".isdigit() is True but int("²") raises, and a 5,000-digit number would too.
    if limit and not (re.fullmatch(r"[0-9]{1,9}", limit) and int(limit) >= 1):
        raise Refused("the limit must be a whole number of records, at least 1")
    title = first(form, "title") or DEFAULT_TITLE
    if len(title) > MAX_TITLE:
        raise Refused(f"the title must be at most {MAX_TITLE} characters")
    return {"name": first(form, "name"), "chosen": chosen, "manifest": first(form, "manifest"),
            "tasks": values(form, "task"), "split": first(form, "split") or None,
            "limit": int(limit) if limit else None, "title": title}


def _default_system(set_name: str) -> str:
    """A set's folder name made into a system name, as the form's suggestion."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", set_name.rsplit("/", 1)[-1])[:64].lstrip("._-") or "system"


def _create_command(studies_root: Path) -> str:
    return (f"melfusion study create --manifest MANIFEST.jsonl --system NAME=SET_DIR --system NAME2=SET_DIR2 "
            f"--out {shlex.quote(str(studies_root))}/NEW_STUDY [--tasks ovl_rel,text,imsm] [--split test] "
            "[--limit 50] [--title TITLE]")
