"""`melfusion study serve`: the study's web application (`app.py`) served by uvicorn.

The server binds its socket itself, before uvicorn starts: a port in use is a one-line error,
and with port 0 (the tests) the free port it got is known before the first request.
"""
from __future__ import annotations

import os
import socket
import sys

import uvicorn

from melfusion.apps.study.app import StudyApp
from melfusion.errors import MelFusionError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
BACKLOG = 1024  # a class of raters pressing "submit" together queues instead of being reset


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # SO_REUSEADDR (set by create_server): a restarted server gets its port back at once, even
        # with connections of the previous run still in TIME_WAIT.
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        reason = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else exc.strerror or str(exc)
        raise MelFusionError(f"cannot listen on {host}:{port}: {reason}") from None


class StudyServer:
    """A study application on a bound socket; `serve_forever` runs uvicorn until `shutdown`."""

    def __init__(self, study_dir, host: str = "127.0.0.1", port: int = 8765, sets_root=None, studies_root=None):
        self.study = StudyApp(study_dir, sets_root=sets_root, studies_root=studies_root)
        self.socket = _listen(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        config = uvicorn.Config(self.study.application(), http="h11", loop="asyncio", ws="none", lifespan="off",
                                log_config=None, log_level="warning", access_log=False, server_header=False,
                                backlog=BACKLOG)
        self.uvicorn = uvicorn.Server(config)

    @property
    def started(self) -> bool:
        return self.uvicorn.started

    def serve_forever(self) -> None:
        self.uvicorn.run(sockets=[self.socket])

    def shutdown(self) -> None:
        """Ask the serving loop to finish (from any thread); requests in flight complete first."""
        self.uvicorn.should_exit = True

    def close(self) -> None:
        self.socket.close()


def make_server(study_dir, host: str = "127.0.0.1", port: int = 8765, sets_root=None,
                studies_root=None) -> StudyServer:
    return StudyServer(study_dir, host, port, sets_root=sets_root, studies_root=studies_root)


def serve(study_dir, host: str = "127.0.0.1", port: int = 8765, sets_root=None, studies_root=None) -> None:
    server = make_server(study_dir, host, port, sets_root=sets_root, studies_root=studies_root)
    if host not in LOOPBACK:
        print(f"note: listening on {host}, reachable from other machines", file=sys.stderr)
    study = server.study
    if study.sets_root is not None:
        print(f"note: /admin/create may build studies in {study.studies_root} from the sets under {study.sets_root}",
              file=sys.stderr)
    # The load and fault checks (load.py) read the port from this line.
    print(f"study at {server.url}/  (admin: /admin?token=...; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
