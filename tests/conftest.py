"""Make the repository root importable (app/, worker/, models/) however pytest is started;
fixtures every test package may use."""
import contextlib
import os
import shutil
import socket
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _require_tool(path_or_name: str) -> str:
    """A Debian tool the Makefile's `sysdeps` target installs (docker-compose, chromium).
    Absent locally: skip; absent with CI=true: fail."""
    found = shutil.which(path_or_name)
    if found:
        return found
    msg = f"{path_or_name} is not installed (run `make sysdeps`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " and CI=true requires it")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def require_tool():
    return _require_tool


PLUGIN_DIR = os.path.join(ROOT, "tests", "plugins", "lethe_tinynet")
TRAINER_PLUGIN_DIR = os.path.join(ROOT, "tests", "plugins", "lethe_augtrain")


def install_plugin(site: str, extra_entry_points: dict[str, str] | None = None, *, plugin_dir: str = PLUGIN_DIR,
                   group: str = "lethe.architectures") -> str:
    """Install an example plug-in (tests/plugins/lethe_tinynet: architectures;
    tests/plugins/lethe_augtrain: trainers) the way pip would make it visible to
    importlib.metadata: a ``.dist-info`` with the ``entry_points.txt`` declared in the
    plug-in's own pyproject.toml (plus ``extra_entry_points`` in ``group``), in a directory
    put on sys.path with the package's source. Returns that directory (the caller puts it on
    sys.path)."""
    import tomllib

    with open(os.path.join(plugin_dir, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    groups = {g: dict(eps) for g, eps in project["entry-points"].items()}
    groups.setdefault(group, {}).update(extra_entry_points or {})
    package = project["name"].replace("-", "_")
    info = os.path.join(site, f"{package}-{project['version']}.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items()))
    shutil.copytree(os.path.join(plugin_dir, "src", package), os.path.join(site, package), dirs_exist_ok=True)
    return site


@pytest.fixture
def augtrain(tmp_path_factory, monkeypatch):
    """The example trainer plug-in installed for this test (with a failing trainer, a
    missing one and one that tries to shadow the built-in ``lethe`` beside it)."""
    from models import trainers

    site = install_plugin(str(tmp_path_factory.mktemp("site")),
                          {"broken": "lethe_augtrain:broken", "diverging": "lethe_augtrain:diverging",
                           "gone": "lethe_augtrain_missing:train", "lethe": "lethe_augtrain:augmented"},
                          plugin_dir=TRAINER_PLUGIN_DIR, group="lethe.trainers")
    monkeypatch.syspath_prepend(site)
    trainers.reload()
    yield "augmented"
    monkeypatch.undo()
    trainers.reload()


@pytest.fixture
def tinynet(tmp_path_factory, monkeypatch):
    """The example plug-in installed for this test (and a broken and a missing one beside it)."""
    from models import architectures

    site = install_plugin(str(tmp_path_factory.mktemp("site")),
                          {"notrunk": "lethe_tinynet:NoTrunkNet", "gone": "lethe_tinynet_missing:Net",
                           "cnn": "lethe_tinynet:TinyNet"})
    monkeypatch.syspath_prepend(site)
    architectures.reload()
    yield "tinynet"
    monkeypatch.undo()
    architectures.reload()


def require_service(name: str, host: str, port: int) -> None:
    """Absent Postgres/Redis: skip locally, FAIL when CI=true."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as e:
        msg = f"{name} is not reachable on {host}:{port} ({e})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " and CI=true requires it")
        pytest.skip(msg)


PG = os.environ.get("LETHE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_pg_database():
    """Create a Postgres database, yield (SQLAlchemy URL, name), drop it after."""
    require_service("Postgres", "127.0.0.1", 5432)
    import psycopg

    name = f"lethe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name
    finally:
        with psycopg.connect(PG, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_database():
    """A fresh Postgres database for one test module: (SQLAlchemy URL, name); dropped after."""
    with fresh_pg_database() as db:
        yield db


@pytest.fixture
def pg_url():
    """A fresh Postgres database for one test: its SQLAlchemy URL; dropped after."""
    with fresh_pg_database() as db:
        yield db[0]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto's standalone ``moto_server``, a dev dependency) on a free
    loopback port, with a versioned bucket ``lethe-data``: (URL of its ``datasets`` prefix for
    ``LETHE_DATASET_URL``, a boto3 client). AWS_* test credentials are set meanwhile."""
    import subprocess
    import time

    import boto3

    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        deadline = time.time() + 30
        while True:
            try:
                client.create_bucket(Bucket="lethe-data")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        client.put_bucket_versioning(Bucket="lethe-data", VersioningConfiguration={"Status": "Enabled"})
        yield f"s3://lethe-data/datasets?endpoint_override=127.0.0.1:{port}&scheme=http", client
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
