"""API keys, server side (straight on the configured database, migrated first):

    lethe keys create --name portal --scopes forget:write,forget:read [--tenant acme] [--json]
    lethe keys revoke k_0123456789ab
    lethe keys list

``create`` prints the key once; only its sha256 is stored (``app/security``)."""
from __future__ import annotations

import json

from ..client import OK, USAGE, CliError
from .common import Commands


def register(cmds: Commands) -> None:
    from ..security import SCOPES

    keys = cmds.group("keys", "API keys, server side: create, revoke, list (LETHE_DATABASE_URL)")
    s = keys.local("create", cmd_create, "create a key and print it once")
    s.add_argument("--name", required=True)
    s.add_argument("--scopes", required=True, help=f"comma-separated, of: {','.join(SCOPES)}")
    s.add_argument("--tenant", default="default",
                   help="whose forget requests the key sees (forget:* keys); operators and auditors see all")
    s.add_argument("--json", action="store_true", help="print {key_id, key, scopes, tenant} as JSON")
    s = keys.local("revoke", cmd_revoke, "revoke a key by id (effective at once)")
    s.add_argument("key_id")
    keys.local("list", cmd_list, "list keys (never the keys themselves)")


def _on_database(action):
    """Run ``action(db)`` in one transaction on the migrated database; a refused value
    (unknown scope, unknown key) is a usage error."""
    from ..db import migrate, session_scope
    from ..settings import get_settings

    settings = get_settings()
    migrate(settings)
    try:
        with session_scope(settings.database_url) as db:
            return action(db)
    except (ValueError, KeyError) as e:
        raise CliError(str(e.args[0] if e.args else e), USAGE) from e


def cmd_create(args) -> int:
    from ..security import create_key

    scopes = args.scopes.split(",")
    key_id, plaintext = _on_database(lambda db: create_key(db, args.name, scopes, actor="cli",
                                                                      tenant=args.tenant))
    if args.json:
        print(json.dumps({"key_id": key_id, "key": plaintext, "scopes": scopes, "tenant": args.tenant}))
    else:
        print(f"key_id: {key_id}\ntenant: {args.tenant}\nkey:    {plaintext}\n(shown once; only its sha256 is stored)")
    return OK


def cmd_revoke(args) -> int:
    from ..security import revoke_key

    def revoke(db):
        k = revoke_key(db, args.key_id, actor="cli")
        return f"revoked {k.id} ({k.name}) at {k.revoked_at.isoformat()}"

    print(_on_database(revoke))
    return OK


def cmd_list(args) -> int:
    from ..security import list_keys

    def rows(db):
        return [f"{k.id}\t{k.name}\t{k.tenant}\t{','.join(k.scopes)}\t{k.prefix}...\t"
                + (f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active") for k in list_keys(db)]

    print("\n".join(_on_database(rows)) or "no keys")
    return OK
