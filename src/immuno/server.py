"""``immuno review RESULTS``: the review page served on 127.0.0.1, saving corrections.

The page (``RESULTS/review/index.html``) works from a file too; served, its editor
saves each correction into the study's corrections file (the config's
``corrections:``) instead of showing the YAML entry to paste. The server binds the
loopback interface only, serves the files of ``RESULTS/review`` and nothing else, and
takes one kind of request: ``POST /api/corrections`` with one entry as JSON. An entry
is checked as the workflow checks the file (:func:`immuno.corrections.parse_entry`,
then against the sample sheet and the templates) before it is appended; a request
from another origin (a web page trying to post to the loopback port) is refused.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .corrections import (
    Corrections,
    CorrectionsError,
    append_correction,
    entry_yaml,
    load_corrections,
    parse_entry,
)
from .errors import ConfigError, ImmunoError

__all__ = ["ReviewServer", "study_from_config"]

log = logging.getLogger(__name__)

#: Largest request body taken (bytes): one entry, with a polygon of many vertices.
MAX_BODY = 256_000
HOST = "127.0.0.1"


def study_from_config(config_path: str | Path, workdir: str | Path = ".") -> dict[str, Any]:
    """The sheet, templates and corrections file a workflow config names.

    Relative paths in the config are relative to ``workdir``, the folder the workflow
    runs in (as Snakemake reads them; its ``--directory``).
    """
    import yaml

    from .cohort import load_sample_sheet, load_templates

    config_path = Path(config_path)
    if not config_path.is_file():
        raise ConfigError(
            "config file does not exist",
            file=str(config_path),
            hint="run `immuno review` in the workflow's folder, or give --config",
        )
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse as YAML: {exc}", file=str(config_path)) from None
    for key in ("samples", "panels"):
        if key not in config:
            raise ConfigError(f"the config has no {key!r}", file=str(config_path), field=key)
    # as the workflow's schema: corrections.yaml beside the study unless the config says
    config.setdefault("corrections", "corrections.yaml")
    if not config["corrections"]:
        raise ConfigError(
            "the config names no corrections file",
            file=str(config_path),
            field="corrections",
            hint="set `corrections: corrections.yaml` in the config",
        )
    base = Path(workdir)
    panels = {str(k): str(base / v) for k, v in config["panels"].items()}
    return {
        "sheet": load_sample_sheet(base / config["samples"], list(panels), check_files=False),
        "templates": load_templates(panels),
        "corrections": base / config["corrections"],
    }


class ReviewServer:
    """Serve ``results/review`` on 127.0.0.1:``port`` (0: any free port) and save the
    page's corrections into ``corrections`` after checking them against ``sheet`` and
    ``templates``. :meth:`serve_forever` blocks; :meth:`start` serves from a thread."""

    def __init__(self, results: str | Path, *, sheet, templates, corrections, port: int = 8765):
        self.review = Path(results) / "review"
        if not (self.review / "index.html").is_file():
            raise ConfigError(
                "no review page",
                file=str(self.review / "index.html"),
                hint="run the workflow first (snakemake): it writes results/review",
            )
        self.sheet, self.templates = sheet, templates
        self.corrections = Path(corrections)
        self._lock = threading.Lock()
        try:
            self.httpd = ThreadingHTTPServer((HOST, port), self._handler())
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {HOST}:{port}: {exc.strerror or exc}",
                field="port",
                hint="another program uses the port: give --port",
            ) from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def hosts(self) -> set[str]:
        """The ``Host`` values a request to this server may carry."""
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def save(self, item: Any) -> dict:
        """Check one entry and append it to the corrections file: the reply's JSON."""
        c = parse_entry(item, file="the review page")
        Corrections(str(self.corrections), history=[c]).check(self.sheet, self.templates)
        with self._lock:
            append_correction(self.corrections, c)
            line = load_corrections(self.corrections).history[-1].line
        return {
            "ok": True,
            "file": str(self.corrections),
            "line": line,
            "yaml": entry_yaml(c),
            "message": f"Saved to {self.corrections} (line {line}). Run the workflow again "
            "(snakemake) to apply it: the gating reruns with the correction.",
        }

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "immuno-review"

            def log_message(self, format, *args):  # noqa: A002 (the base class's name)
                log.info("%s %s", self.address_string(), format % args)

            def _send(self, status: int, body: bytes, ctype: str, *, cache: bool = True):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                if not cache:
                    self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: dict):
                self._send(status, json.dumps(obj).encode(), "application/json", cache=False)

            def _local(self) -> bool:
                """A request addressed to this server by its loopback name: a page of
                another site whose name is rebound to 127.0.0.1 says its own Host."""
                if self.headers.get("Host") in server.hosts:
                    return True
                self._send(421, b"requests must name 127.0.0.1 or localhost", "text/plain")
                return False

            def do_GET(self):  # noqa: N802 (the base class's name)
                if not self._local():
                    return None
                path = unquote(urlsplit(self.path).path)
                if path == "/api/status":
                    try:
                        n = len(load_corrections(server.corrections).history)
                    except ImmunoError as exc:  # say why saving will not work
                        return self._json(200, {"ok": False, "error": str(exc)})
                    return self._json(
                        200, {"ok": True, "corrections": str(server.corrections), "entries": n}
                    )
                rel = path.lstrip("/") or "index.html"
                root = server.review.resolve()
                try:
                    target = (root / rel).resolve()
                    found = root in target.parents and target.is_file()
                except (OSError, ValueError):  # a NUL byte, a name too long, a loop
                    found = False
                if not found:
                    return self._send(404, b"not found", "text/plain")
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if ctype.startswith("text/") or ctype.endswith("javascript"):
                    ctype += "; charset=utf-8"
                # the page and the edit scripts change when the workflow reruns
                fresh = target.suffix in (".html", ".js")
                self._send(200, target.read_bytes(), ctype, cache=not fresh)

            def do_POST(self):  # noqa: N802
                if not self._local():
                    return None
                if urlsplit(self.path).path != "/api/corrections":
                    return self._json(404, {"ok": False, "error": "not found"})
                origin = self.headers.get("Origin")
                if origin is not None and origin not in {f"http://{h}" for h in server.hosts}:
                    return self._json(403, {"ok": False, "error": f"origin {origin} refused"})
                if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                    return self._json(415, {"ok": False, "error": "send application/json"})
                try:
                    size = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    size = -1
                if not 0 < size <= MAX_BODY:
                    return self._json(413, {"ok": False, "error": "one entry, as JSON"})
                try:
                    item = json.loads(self.rfile.read(size))
                    reply = server.save(item)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    return self._json(400, {"ok": False, "error": f"not JSON: {exc}"})
                except CorrectionsError as exc:
                    return self._json(
                        HTTPStatus.UNPROCESSABLE_ENTITY, {"ok": False, "error": str(exc)}
                    )
                except (ImmunoError, OSError, ValueError) as exc:
                    log.exception("saving a correction failed")
                    text = (
                        str(exc) if isinstance(exc, ImmunoError) else f"{type(exc).__name__}: {exc}"
                    )
                    return self._json(500, {"ok": False, "error": f"not saved: {text}"})
                self._json(200, reply)

        return Handler
