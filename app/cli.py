"""``python -m app.cli {migrate,bootstrap,serve}``; ``make run`` calls ``serve``."""
from __future__ import annotations

import argparse
import logging
import os

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lethe")
    p.add_argument("command", choices=["migrate", "bootstrap", "serve"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    migrate(settings)
    if args.command == "migrate":
        return
    if settings.bootstrap_demo or args.command == "bootstrap":
        from .bootstrap import bootstrap_demo, bootstrap_exact_demo

        bootstrap_demo(settings)
        bootstrap_exact_demo(settings)
    if args.command == "serve":
        import uvicorn

        from .main import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
