"""``python -m app.security keys {create,revoke,list}``: manage API keys.

    python -m app.security keys create --name portal --scopes forget:write,forget:read
    python -m app.security keys revoke k_0123456789ab
    python -m app.security keys list

Uses LETHE_DATABASE_URL like the service (and migrates it first). ``create`` prints the
key once; only its sha256 is stored.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import SCOPES, create_key, list_keys, revoke_key


def _migrate(settings) -> None:
    """Bring the database to the latest schema (same as ``python -m app.cli migrate``)."""
    import os

    from alembic import command
    from alembic.config import Config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    settings.ensure_dirs()
    cfg = Config(os.path.join(root, "alembic.ini"))
    cfg.set_main_option("script_location", os.path.join(root, "migrations"))
    cfg.attributes["url"] = settings.database_url
    command.upgrade(cfg, "head")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.security")
    sub = p.add_subparsers(dest="group", required=True)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="command", required=True)
    c = keys.add_parser("create", help="create a key and print it once")
    c.add_argument("--name", required=True)
    c.add_argument("--scopes", required=True, help=f"comma-separated, of: {','.join(SCOPES)}")
    c.add_argument("--json", action="store_true", help="print {key_id, key, scopes} as JSON")
    r = keys.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id")
    keys.add_parser("list", help="list keys (never the keys themselves)")
    args = p.parse_args(argv)

    from ..db import session_scope
    from ..settings import get_settings

    settings = get_settings()
    _migrate(settings)
    try:
        with session_scope(settings.database_url) as db:
            if args.command == "create":
                scopes = args.scopes.split(",")
                key_id, plaintext = create_key(db, args.name, scopes, actor="cli")
                if args.json:
                    print(json.dumps({"key_id": key_id, "key": plaintext, "scopes": scopes}))
                else:
                    print(f"key_id: {key_id}\nkey:    {plaintext}\n(shown once; only its sha256 is stored)")
            elif args.command == "revoke":
                k = revoke_key(db, args.key_id, actor="cli")
                print(f"revoked {k.id} ({k.name}) at {k.revoked_at.isoformat()}")
            else:
                for k in list_keys(db):
                    state = f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active"
                    print(f"{k.id}\t{k.name}\t{','.join(k.scopes)}\t{k.prefix}...\t{state}")
    except (ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
