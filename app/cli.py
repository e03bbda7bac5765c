"""``lethe`` — the operators' command line (console script; also ``python -m app.cli``).

Server-side commands act on the configured database directly (``LETHE_*`` settings):
``migrate``, ``bootstrap``, ``serve``. ``make run`` calls ``serve``.
"""
from __future__ import annotations

import argparse
import logging
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

def _setup_logging(settings: Settings) -> None:
    from .observability import configure_logging

    configure_logging(settings.log_format)


def cmd_migrate(args) -> int:
    settings = get_settings()
    _setup_logging(settings)
    migrate(settings)
    return 0


def cmd_bootstrap(args) -> int:
    from .bootstrap import bootstrap_demo

    settings = get_settings()
    _setup_logging(settings)
    migrate(settings)
    bootstrap_demo(settings)
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from .main import create_app

    settings = get_settings()
    _setup_logging(settings)
    if not args.no_migrate:
        migrate(settings)
    if settings.bootstrap_demo:
        from .bootstrap import bootstrap_demo

        bootstrap_demo(settings)
    # access_log off: the gateway logs each request itself, as JSON with the route
    # template (never the raw path, which can carry a subject id)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=False, log_config=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lethe", description="Operate a Lethe machine-unlearning service.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
