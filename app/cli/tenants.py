"""Tenants, server side (straight on the configured database, migrated first), like keys:

    lethe tenants list
    lethe tenants show acme
    lethe tenants grant acme mnist5k-cnn        # acme's keys may target the model
    lethe tenants revoke acme mnist5k-cnn
    lethe tenants set acme --methods lethe,finetune --max-open 20 --max-per-day 500 [--all-models | --no-all-models]

The same changes over HTTP: ``PUT/DELETE /v1/tenants/{tenant}/models/{model}``,
``PUT /v1/tenants/{tenant}`` (``models:admin``). Every change is audited."""
from __future__ import annotations

import argparse
import json

from ..client import OK
from .common import Commands
from .keys import _on_database


def register(cmds: Commands) -> None:
    t = cmds.group("tenants", "tenants, server side: which models each may target, methods, quotas")
    s = t.local("list", cmd_list, "every tenant, its grants and limits")
    s.add_argument("--json", action="store_true")
    s = t.local("show", cmd_show, "one tenant: grants, methods, limits, usage")
    s.add_argument("tenant")
    s.add_argument("--json", action="store_true")
    for name, func, what in (("grant", cmd_grant, "let the tenant's keys target a model"),
                             ("revoke", cmd_revoke, "withdraw a grant (accepted requests still run)")):
        s = t.local(name, func, what)
        s.add_argument("tenant")
        s.add_argument("model")
    s = t.local("set", cmd_set, "create a tenant or change its methods, limits, access to every model")
    s.add_argument("tenant")
    s.add_argument("--all-models", action=argparse.BooleanOptionalAction, default=None,
                   help="may target every model, present and future")
    s.add_argument("--methods", default=None, help="comma-separated methods it may ask for; 'all' clears the list")
    s.add_argument("--max-open", type=int, default=None, help="open requests at most (0 unlimited; -1: the setting)")
    s.add_argument("--max-per-day", type=int, default=None,
                   help="submissions in any 24 h at most (0 unlimited; -1: the setting)")


def _view(db, name: str) -> dict:
    from ..settings import get_settings
    from ..tenants import router

    row = router.service.get(db, name)
    if row is None:
        raise KeyError(f"no tenant {name!r}")
    return router.read(db, get_settings(), row).model_dump(mode="json")


def _print(view: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view, indent=2, sort_keys=True))
        return
    models = "every model" if view["all_models"] else (", ".join(view["models"]) or "none")
    print(f"{view['name']}\tmodels: {models}\tmethods: {', '.join(view['methods']) if view['methods'] else 'all'}\t"
          f"open {view['usage']['open_requests']}/{view['limits']['max_open_requests'] or 'unlimited'}\t"
          f"24h {view['usage']['requests_last_24h']}/{view['limits']['max_requests_per_day'] or 'unlimited'}")


def _change(args, action) -> int:
    from ..errors import LetheError

    def run(db):
        try:
            action(db)
        except LetheError as e:  # unknown model or tenant, bad method: a usage error here
            raise ValueError(e.detail) from e
        return _view(db, args.tenant)

    _print(_on_database(run), getattr(args, "json", False))
    return OK


def cmd_list(args) -> int:
    from ..tenants import service

    for view in _on_database(lambda db: [_view(db, t.name) for t in service.list_all(db)]):
        _print(view, args.json)
    return OK


def cmd_show(args) -> int:
    _print(_on_database(lambda db: _view(db, args.tenant)), args.json)
    return OK


def cmd_grant(args) -> int:
    from ..tenants import service

    return _change(args, lambda db: service.grant(db, args.tenant, args.model, actor="cli"))


def cmd_revoke(args) -> int:
    from ..tenants import service

    return _change(args, lambda db: service.revoke(db, args.tenant, args.model, actor="cli"))


def cmd_set(args) -> int:
    from ..tenants import service

    sent: dict = {}
    if args.all_models is not None:
        sent["all_models"] = args.all_models
    if args.methods is not None:
        sent["methods"] = None if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    for flag, field in (("max_open", "max_open_requests"), ("max_per_day", "max_requests_per_day")):
        value = getattr(args, flag)
        if value is not None:
            if value < -1:
                raise_usage(f"--{flag.replace('_', '-')} must be -1, 0 or more")
            sent[field] = None if value == -1 else value
    return _change(args, lambda db: service.update(db, args.tenant, actor="cli", **sent))


def raise_usage(msg: str):
    from ..client import USAGE, CliError

    raise CliError(msg, USAGE)
