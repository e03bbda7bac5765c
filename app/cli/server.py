"""Server side (on the configured database and storage, ``LETHE_*`` settings):
``serve`` (``make run``), ``migrate``, ``bootstrap``, ``doctor`` and ``worker`` (a Celery worker when
``LETHE_BROKER_URL`` is set)."""
from __future__ import annotations

import os
import sys

from ..client import OK, USAGE, CliError
from ..db import migrate
from ..settings import Settings, get_settings
from .common import Commands

CELERY_WORKER = ["-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo", "--loglevel=INFO"]


def register(cmds: Commands) -> None:
    cmds.local("migrate", cmd_migrate, "run the database migrations (Alembic upgrade head)")
    cmds.local("bootstrap", cmd_bootstrap, "migrate, then train/register/catalogue the demo models if none is "
                                           "registered")
    s = cmds.local("serve", cmd_serve, "run the gateway (migrates first; bootstraps when LETHE_BOOTSTRAP_DEMO; "
                                       "runs jobs in-process when LETHE_BROKER_URL is empty)")
    s.add_argument("--no-migrate", action="store_true", help="skip the migrations (a separate step ran them)")
    cmds.local("doctor", cmd_doctor, "report models whose catalogue disagrees with their dataset (held-out rows "
                                     "named as training rows, another subject than the dataset's); changes nothing")
    s = cmds.local("worker", cmd_worker, "run a Celery worker on LETHE_BROKER_URL (one per GPU); "
                                         "other arguments go to celery, e.g. --hostname gpu0@%%h")
    s.set_defaults(celery_args=[])


def server_settings() -> Settings:
    """The settings of a command that touches data (serve, migrate, bootstrap, worker): a
    deployment's development or weak secrets, or a missing audit anchor, stop it here, before
    anything is read or written (``Settings.check_secrets``)."""
    from ..observability import configure_logging
    from ..settings import InsecureSettings

    settings = get_settings()
    configure_logging(settings.log_format)
    try:
        settings.check_secrets()
    except InsecureSettings as e:
        raise CliError(f"refusing to start: {e}", USAGE) from None
    return settings


def cmd_migrate(args) -> int:
    migrate(server_settings())
    return OK


def doctor_report(settings: Settings) -> dict[str, dict]:
    """{model: what disagrees} (``catalogue.disagreeing_rows``) on the configured database."""
    from ..catalogue.service import disagreeing_rows
    from ..datasets import service as datasets
    from ..db import read_scope

    def store_for(name: str):
        try:
            return datasets.open_store(settings, name)
        except Exception:  # noqa: BLE001 - a dataset without a store cannot be compared
            return None

    with read_scope(settings.database_url) as db:
        return disagreeing_rows(db, store_for)


def cmd_doctor(args) -> int:
    """Exit 0 when every model's catalogue agrees with its dataset, 1 otherwise."""
    report = doctor_report(server_settings())
    for model, bad in report.items():
        print(f"{model}: dataset {bad['dataset']}: {bad['held_out_rows']} held-out row(s) catalogued as training "
              f"rows, {bad['subject_mismatch']} row(s) with another subject than the dataset's "
              f"(e.g. {', '.join(bad['examples'][:5])})")
    if not report:
        print("every model's catalogue agrees with its dataset")
    return 1 if report else OK


def _bootstrap(settings: Settings) -> None:
    from ..bootstrap import bootstrap_demo, bootstrap_exact_demo

    bootstrap_demo(settings)
    for kind in dict.fromkeys(settings.demo_exact_kinds.split(",")):
        bootstrap_exact_demo(settings, kind)


def cmd_bootstrap(args) -> int:
    settings = server_settings()
    migrate(settings)
    _bootstrap(settings)
    return OK


def cmd_serve(args) -> int:
    import uvicorn

    from ..main import create_app, tune_gc

    settings = server_settings()
    problem = settings.web_concurrency_problem()
    if problem:
        raise CliError(problem, USAGE)
    if not args.no_migrate:
        migrate(settings)
    if settings.bootstrap_demo:
        _bootstrap(settings)
    # access_log off: the gateway logs each request itself, as JSON with the route
    # template (never the raw path, which can carry a subject id)
    common = dict(host=settings.host, port=settings.port, log_level="info", access_log=False, log_config=None)
    if settings.web_concurrency == 1:
        app = create_app(settings)
        tune_gc()
        uvicorn.run(app, **common)
        return OK
    from .. import security

    security.bootstrap_keys(settings)  # once, before the processes start (each would race to insert it)
    uvicorn.run("app.main:worker_process_app", factory=True, workers=settings.web_concurrency, **common)
    return OK


def worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    """The Celery worker command line: solo pool (one job at a time, CUDA initialised in the
    task), the queue ``LETHE_QUEUE_NAME`` (``worker/celery_app.py``). Refused in embedded
    mode, where the gateway runs jobs itself."""
    if not settings.broker_url:
        raise CliError("LETHE_BROKER_URL is empty: this is embedded mode, where `lethe serve` runs jobs in its "
                       "own thread (LETHE_EMBEDDED_WORKER). Set LETHE_BROKER_URL=redis://host:6379/0 (and "
                       "LETHE_DATABASE_URL to the gateway's Postgres) to run separate workers", USAGE)
    return [sys.executable, *CELERY_WORKER, *extra]


def cmd_worker(args) -> int:
    argv = worker_argv(server_settings(), args.celery_args)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # the worker replaces this process: signals reach Celery directly
    return OK  # not reached
