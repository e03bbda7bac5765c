"""``lethe`` — the one command line for everything an operator does (console script; also
``python -m app.cli``). One module per command group:

- ``server``: ``serve`` (``make run``), ``migrate``, ``bootstrap``, ``worker`` — on the
  configured database and storage (``LETHE_*`` settings, docs/configuration.md);
- ``keys``: API keys, server side (``keys create | revoke | list``);
- ``tenants``: tenants, server side (``tenants list | show | grant | revoke | set``);
- ``forget``: ``forget``, ``watch``, ``status``, ``list``, ``cancel``, ``deny``, ``retry``;
- ``registry``: ``models`` (``register``, ``train``, ``pull``, ``consolidate``), ``versions``,
  ``history``, ``rollback``;
- ``datasets``: ``datasets``, ``datasets add``;
- ``audit``: ``audit verify | export | verify-export`` (the last one offline);
- ``certificate``: ``certificate get | verify`` (verify offline with ``--public-key``);
- ``docs``: regenerate (or ``--check``) the tables docs/ generates from the code.

Client-side commands talk to the HTTP API (``app/client.py``): base URL from ``--url`` or
``LETHE_URL``, API key from ``--api-key`` or ``LETHE_API_KEY``, ``--json`` for scripts.
"""
from __future__ import annotations

import argparse
import sys

from ..db import ROOT, migrate
from . import audit, certificate, datasets, docs, forget, keys, mirror, registry, server, tenants
from .common import Commands, connection_options

__all__ = ["ROOT", "build_parser", "main", "migrate"]

GROUPS = (forget, registry, datasets, audit, certificate, keys, tenants, mirror, server, docs)

EPILOG = ("Exit codes: 0 ok; 1 negative answer (request failed, denied or canceled, chain broken, certificate "
          "invalid); 2 usage; 3 API error, refusal (401/403/404/409) or unreachable; 4 watch timeout.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lethe", description="Operate a Lethe machine-unlearning service.",
                                epilog=EPILOG)
    cmds = Commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), connection_options())
    for group in GROUPS:
        group.register(cmds)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `lethe worker` hands the arguments it does not know to celery; every other command refuses them
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if extra and not hasattr(args, "celery_args"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.celery_args = [*extra, *args.celery_args]
    return args.func(args)
