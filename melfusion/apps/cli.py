"""`melfusion serve` (the Gradio demo) and `melfusion study ...` (the user-study app).

`add_app_commands(subparsers)` registers both on the main command line."""
from __future__ import annotations

import sys

from melfusion.errors import MelFusionError


def _serve(args) -> int:
    from melfusion.apps.demo import serve

    serve(model=args.model, host=args.host, port=args.port, concurrency=args.concurrency,
          max_upload_mb=args.max_upload_mb, max_queue=args.max_queue)
    return 0


def _study_create(args) -> int:
    from melfusion.apps.study.build import create_study

    systems = {}
    for item in args.system:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder:
            raise MelFusionError(f"--system takes NAME=DIR, got {item!r}")
        if name in systems:
            raise MelFusionError(f"system named twice: {name}")
        systems[name.strip()] = folder
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    res = create_study(args.manifest, systems, args.out, tasks=tasks, split=args.split, limit=args.limit,
                       seed=args.seed, title=args.title)
    print(f"{args.out}: {res['items']} items ({', '.join(f'{k} {v}' for k, v in res['per_task'].items())}) "
          f"from {res['records']} records and {len(systems)} systems")
    print(f"admin token (keep it; also in {res['token_file']}): {res['token']}")
    return 0


def _study_serve(args) -> int:
    from melfusion.apps.study.server import serve

    serve(args.dir, host=args.host, port=args.port, sets_root=args.sets_root, studies_root=args.studies_root)
    return 0


def _study_report(args) -> int:
    from melfusion.apps.study.report import write_report

    md, csv_path = write_report(args.dir, args.out)
    sys.stdout.write(md)
    print(f"\nwrote {csv_path} and {csv_path.with_suffix('.md')}", file=sys.stderr)
    return 0


def _study_export(args) -> int:
    from melfusion.apps.study.report import export_ratings

    n = export_ratings(args.dir, args.out)
    print(f"wrote {n} ratings to {args.out}", file=sys.stderr)
    return 0


def add_app_commands(subparsers) -> None:
    s = subparsers.add_parser("serve", help="the web demo (Gradio) on this machine")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--model", default=None, help="model directory or preset (default: the shipped model)")
    s.add_argument("--concurrency", type=int, default=1, help="generations run at once (others queue)")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload accepted")
    s.add_argument("--max-queue", type=int, default=16,
                   help="generation requests that may wait; one more is told the server is busy (default 16)")
    s.set_defaults(func=_serve)

    st = subparsers.add_parser("study", help="the listening study of appendix G: create, serve, report",
                               description="Build a rating study from generated sets, serve it, report it.")
    sub = st.add_subparsers(dest="study_command", metavar="COMMAND", required=True)
    c = sub.add_parser("create", help="build a study folder from a manifest and generated sets")
    c.add_argument("--manifest", required=True, help="JSON Lines manifest (id, image, caption) the sets were made from")
    c.add_argument("--system", action="append", required=True, metavar="NAME=DIR",
                   help="a generated set: DIR/<id>.wav per record (repeat for each system)")
    c.add_argument("--out", required=True, help="the study folder to create (must not exist)")
    c.add_argument("--tasks", default="ovl_rel,text,imsm",
                   help="comma list of: ovl_rel (image+text+music), text (text+music), imsm (image+music)")
    c.add_argument("--split", default=None, help="only records of this split")
    c.add_argument("--limit", type=int, default=None, help="at most this many records")
    c.add_argument("--seed", type=int, default=0, help="seed for choosing records when --limit is given")
    c.add_argument("--title", default="Music for images and text: a listening study")
    c.set_defaults(func=_study_create)

    v = sub.add_parser("serve", help="serve the study to raters")
    v.add_argument("dir", help="the study folder")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8765)
    v.add_argument("--sets-root", default=None, metavar="ROOT",
                   help="turn on the admin create page: it lists the generated sets and manifests under ROOT "
                        "and builds only from those (default: off)")
    v.add_argument("--studies-root", default=None, metavar="DIR",
                   help="where the create page puts new studies (default: the folder holding the served study)")
    v.set_defaults(func=_study_serve)

    r = sub.add_parser("report", help="mean, 95%% CI and count per system and measure (Markdown and CSV)")
    r.add_argument("dir", help="the study folder")
    r.add_argument("--out", default=None, help="CSV path (default: DIR/report.csv; Markdown beside it)")
    r.set_defaults(func=_study_report)

    e = sub.add_parser("export", help="every rating as CSV (one row per rating)")
    e.add_argument("dir")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_study_export)


def main(argv=None) -> int:
    from melfusion.cli import main as root_main

    return root_main(argv)
