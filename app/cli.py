"""``lethe`` — the operators' command line (console script; also ``python -m app.cli``).

Server-side commands act on the configured database directly (``LETHE_*`` settings):
``migrate``, ``bootstrap``, ``serve``. ``make run`` calls ``serve``.
Every other command talks to the HTTP API (``app/client.py``): base URL from ``--url`` or
``LETHE_URL``, API key from ``--api-key`` or ``LETHE_API_KEY``, ``--json`` for scripts.
"""
from __future__ import annotations

import argparse
import os
import sys

from .settings import Settings, get_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def migrate(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    settings.ensure_dirs()
    cfg = Config(os.path.join(ROOT, "alembic.ini"))
    cfg.set_main_option("script_location", os.path.join(ROOT, "migrations"))
    cfg.attributes["url"] = settings.database_url
    command.upgrade(cfg, "head")


# --- server-side commands ----------------------------------------------------------------

def _server_settings() -> Settings:
    from .observability import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format)
    return settings


def cmd_migrate(args) -> int:
    migrate(_server_settings())
    return 0


def cmd_bootstrap(args) -> int:
    from .bootstrap import bootstrap_demo, bootstrap_exact_demo

    settings = _server_settings()
    migrate(settings)
    bootstrap_demo(settings)
    bootstrap_exact_demo(settings)
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from .main import create_app

    settings = _server_settings()
    if not args.no_migrate:
        migrate(settings)
    if settings.bootstrap_demo:
        from .bootstrap import bootstrap_demo, bootstrap_exact_demo

        bootstrap_demo(settings)
        bootstrap_exact_demo(settings)
    # access_log off: the gateway logs each request itself, as JSON with the route
    # template (never the raw path, which can carry a subject id)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=False, log_config=None)
    return 0


def _http(func):
    """Wrap an HTTP command: build the client from the common options, map errors to exit codes."""
    def run(args) -> int:
        from .client import DEFAULT_URL, Api, CliError

        api = Api(args.url or os.environ.get("LETHE_URL") or DEFAULT_URL,
                  args.api_key or os.environ.get("LETHE_API_KEY"), timeout=args.http_timeout)
        try:
            return func(api, args)
        except CliError as e:
            print(f"lethe: {e}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            return 130
        finally:
            api.http.close()
    return run


def build_parser() -> argparse.ArgumentParser:
    from . import client as c
    from .forget.models import DENY_REASONS, STATUSES

    p = argparse.ArgumentParser(prog="lethe", description="Operate a Lethe machine-unlearning service.",
                                epilog="Exit codes: 0 ok; 1 negative answer (request failed, denied or canceled, "
                                       "chain broken, certificate invalid); 2 usage; 3 API error, refusal "
                                       "(401/403/404/409) or unreachable; 4 watch timeout.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument("--url", default=None, help=f"API base URL (env LETHE_URL; default {c.DEFAULT_URL})")
    g.add_argument("--api-key", default=None, help="bearer API key (env LETHE_API_KEY)")
    g.add_argument("--json", action="store_true", help="print the answer as JSON")
    g.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)

    def http(name, func, help_, parent=sub):
        s = parent.add_parser(name, help=help_, parents=[common])
        s.set_defaults(func=_http(func))
        return s

    def add_watch_opts(s):
        s.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
        s.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0 = never)")
        s.add_argument("--quiet", action="store_true", help="no progress bar on stderr")

    s = http("forget", c.cmd_forget, "submit a deletion request")
    s.add_argument("--model", required=True)
    s.add_argument("--subject", help="forget every catalogued instance of this subject")
    s.add_argument("--instance", action="append", metavar="ID", help="a training instance id (repeatable)")
    s.add_argument("--objective", default="misclassify", choices=["misclassify", "relabel", "retrain_like"])
    s.add_argument("--method", default=None, choices=["instance", "lethe", "paper_full", "paper_ga", "paper_ga_adv",
                                                      "sisa", "arcane", "puma"],
                   help="default: the model's own method family")
    s.add_argument("--target-label", type=int)
    s.add_argument("--external-id", help="your own reference (ticket id)")
    s.add_argument("--idempotency-key", help="retrying with the same key returns the same request")
    s.add_argument("--watch", action="store_true", help="then watch it until it ends")
    add_watch_opts(s)

    s = http("watch", c.cmd_watch, "follow a request until it ends (progress bar on stderr)")
    s.add_argument("request_id")
    add_watch_opts(s)

    s = http("status", c.cmd_status, "show a request once")
    s.add_argument("request_id")

    s = http("list", c.cmd_list, "list requests, newest first (filters: --status, --model, --overdue)")
    s.add_argument("--status", choices=STATUSES)
    s.add_argument("--model")
    s.add_argument("--overdue", action="store_true", help="only open requests past their due date")
    s.add_argument("--limit", type=int, default=50, help="at most this many (default 50, at most 500)")
    s.add_argument("--offset", type=int, default=0)

    s = http("cancel", c.cmd_cancel, "cancel a request that has not started (API key with forget:write)")
    s.add_argument("request_id")
    s.add_argument("--reason")

    s = http("deny", c.cmd_deny, "deny a queued or failed request with a reason code (models:admin)")
    s.add_argument("request_id")
    s.add_argument("--reason-code", required=True, choices=DENY_REASONS)
    s.add_argument("--reason", required=True, help="free text, shown to the requester")

    s = http("retry", c.cmd_retry, "run a failed request again (models:admin)")
    s.add_argument("request_id")

    s = http("versions", c.cmd_versions, "a model's versions (state: ready, tainted, purged), aliases and alias moves")
    s.add_argument("model")

    s = http("history", c.cmd_history, "every move of a model's aliases: when, from, to, why, by whom")
    s.add_argument("model")
    s.add_argument("--alias", help="only this alias")

    s = http("rollback", c.cmd_rollback, "point an alias (default production) at another version (models:admin); "
                                         "refused for a tainted or purged version")
    s.add_argument("model")
    s.add_argument("version", type=int)
    s.add_argument("--alias", default="production")
    s.add_argument("--reason", help="why (kept in the alias history)")

    audit = sub.add_parser("audit", help="the audit chain").add_subparsers(dest="audit_command", required=True,
                                                                           metavar="SUBCOMMAND")
    http("verify", c.cmd_audit_verify, "recompute the hash chain on the server", parent=audit)

    cert = sub.add_parser("certificate", help="deletion certificates").add_subparsers(
        dest="certificate_command", required=True, metavar="SUBCOMMAND")
    s = http("get", c.cmd_certificate_get, "download a request's certificate", parent=cert)
    s.add_argument("request_id")
    s.add_argument("-o", "--output", help="write it to this file")
    s = http("verify", c.cmd_certificate_verify, "check a certificate file's Ed25519 signature locally",
             parent=cert)
    s.add_argument("file")
    s.add_argument("--public-key", metavar="FILE", help="the audit public key (PEM, or raw 32 bytes in base64/hex); "
                                                        "default: fetched from GET /v1/keys/audit (no API key needed)")

    sub.add_parser("keys", help="API keys, server side: keys create --name N --scopes a,b | keys revoke ID | "
                                "keys list (see python -m app.security --help)", add_help=False)
    s = sub.add_parser("migrate", help="run the database migrations (server side)")
    s.set_defaults(func=cmd_migrate)
    s = sub.add_parser("bootstrap", help="migrate, then train/register/catalogue the demo model if none is "
                                         "registered (server side)")
    s.set_defaults(func=cmd_bootstrap)
    s = sub.add_parser("serve", help="run the gateway (migrates first; bootstraps when LETHE_BOOTSTRAP_DEMO)")
    s.add_argument("--no-migrate", action="store_true", help="skip the migrations (a separate step ran them)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["keys"]:  # server side, straight on the database: app/security/__main__.py
        from .security.__main__ import main as keys_main

        return keys_main(argv)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
