"""``lethe mlflow sync``: make the MLflow Model Registry agree with Lethe's now (server side:
reads the database named by the settings; idempotent, catches up after MLflow was down)."""
from __future__ import annotations

import json

from ..client import OK, USAGE, CliError
from .common import Commands


def register(cmds: Commands) -> None:
    g = cmds.group("mlflow", "the MLflow Model Registry mirror (LETHE_MLFLOW_TRACKING_URI)")
    s = g.local("sync", cmd_sync, "mirror every Lethe version, alias and purge to MLflow now (idempotent)")
    s.add_argument("--model", help="only this model")


def cmd_sync(args) -> int:
    from ..settings import get_settings
    from ..mirror.service import Mirror

    settings = get_settings()
    if not settings.mlflow_tracking_uri:
        raise CliError("LETHE_MLFLOW_TRACKING_URI is not set: no MLflow to mirror to", code=USAGE)
    done = Mirror(settings).sync(args.model)
    print(json.dumps({k: len(v) for k, v in done.items()} | {"changes": done}, sort_keys=True))
    return OK
