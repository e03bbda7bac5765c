"""Dockerfile and docker-compose.yml. No Docker engine runs here, so the stack is never
started: Debian's docker-compose 1.29 validates the compose file against its schema
(`docker-compose config -q`), and the Dockerfile is checked statically."""
from __future__ import annotations

import os
import sys
import re
import shlex
import subprocess
import tomllib

import pytest
import yaml

from app.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMPOSE = os.path.join(ROOT, "docker-compose.yml")
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("LETHE_", "POSTGRES_", "COMPOSE_"))}


@pytest.fixture(scope="module")
def compose(require_tool):
    exe = require_tool("docker-compose")

    def run(*args, secret: str | None = "s3cret-0123456789", webhook_secret: str | None = "whs3cret-0123456789",
            **extra_env):
        env = dict(ENV, **({"LETHE_SUBJECT_SECRET": secret} if secret else {}),
                   **({"LETHE_WEBHOOK_SECRET": webhook_secret} if webhook_secret else {}), **extra_env)
        return subprocess.run([exe, "-f", COMPOSE, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    return run


@pytest.fixture(scope="module")
def resolved(compose) -> dict:
    r = compose("config")
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_compose_file_is_valid(compose):
    r = compose("config", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""


def test_compose_refuses_to_start_without_a_subject_secret(compose):
    r = compose("config", "-q", secret=None)
    assert r.returncode != 0
    assert "LETHE_SUBJECT_SECRET" in r.stderr


def test_compose_requires_a_webhook_secret(compose, resolved):
    """Issue 15 finding 6: the default webhook secret let anyone forge webhooks."""
    r = compose("config", "-q", webhook_secret=None)
    assert r.returncode != 0 and "LETHE_WEBHOOK_SECRET" in r.stderr
    for name in ("migrate", "api", "worker"):
        assert resolved["services"][name]["environment"]["LETHE_WEBHOOK_SECRET"] == "whs3cret-0123456789"


def test_services_start_order_and_healthchecks(resolved):
    svc = resolved["services"]
    assert set(svc) == {"postgres", "redis", "objectstore", "objectstore-init", "migrate", "api", "worker", "worker-2"}
    for name in ("postgres", "redis", "objectstore", "api", "worker", "worker-2"):
        assert svc[name]["healthcheck"]["test"], name
    for name in ("api", "worker", "worker-2"):
        deps = svc[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert svc[name]["image"] == svc["migrate"]["image"]  # one image for gateway and worker
    assert svc["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # everything talks to the compose Postgres and Redis, and shares the registry volume
    for name in ("migrate", "api", "worker", "worker-2"):
        assert svc[name]["depends_on"]["objectstore-init"]["condition"] == "service_completed_successfully"
        env = svc[name]["environment"]
        # dataset fragments in the compose object store's versioned bucket
        assert env["LETHE_DATASET_URL"].startswith("s3://lethe/") and "endpoint_override=objectstore:9000" in env["LETHE_DATASET_URL"]
        # model weights there too (content-addressed objects; LETHE_REGISTRY_DIR is each node's cache)
        assert env["LETHE_REGISTRY_URL"].startswith("s3://lethe/registry") and "endpoint_override=objectstore:9000" in env["LETHE_REGISTRY_URL"]
        assert int(env["LETHE_WEIGHTS_CACHE_BYTES"]) > 0
        assert env["LETHE_DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["LETHE_DATABASE_URL"]
        assert env["LETHE_BROKER_URL"] == "redis://redis:6379/0"
        assert env["LETHE_SUBJECT_SECRET"] == "s3cret-0123456789"
        assert any(str(v).endswith(":/var/lib/lethe:rw") or str(v).endswith(":/var/lib/lethe") for v in svc[name]["volumes"]), svc[name]["volumes"]
    for name in ("worker", "worker-2"):
        assert svc[name]["command"][:5] == ["celery", "-A", "worker.celery_app", "worker", "--pool=solo"]
    assert "mc version enable" in svc["objectstore-init"]["entrypoint"][-1]  # erasure reaches every version
    assert "8000" in str(svc["api"]["ports"])


def test_compose_commands_are_real_cli_commands(resolved):
    """Every `lethe ...` the stack runs parses with the CLI's own parser."""
    svc = resolved["services"]
    cmds = [svc["api"]["command"]]
    script = svc["migrate"]["command"][-1]
    cmds += [shlex.split(part.split("then", 1)[-1].strip()) for part in re.split(r"&&|;", script) if "lethe" in part]
    assert [c[:2] for c in cmds] == [["lethe", "serve"], ["lethe", "migrate"], ["lethe", "bootstrap"]]
    for c in cmds:
        args = build_parser().parse_args(c[1:])
        assert callable(args.func)
    assert build_parser().parse_args(svc["api"]["command"][1:]).no_migrate is True
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["lethe"] == "app.cli:main"


def test_dockerfile_base_is_a_build_argument_and_sources_exist():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    first_from = next(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    assert any(ln.startswith("ARG BASE_IMAGE=") for ln in lines[:first_from])
    assert lines[first_from] == "FROM ${BASE_IMAGE}"
    for ln in lines:
        if ln.startswith("COPY "):
            srcs = ln.split()[1:-1]
            for src in srcs:
                assert os.path.exists(os.path.join(ROOT, src)), f"Dockerfile copies missing {src}"
    assert any(ln.startswith("HEALTHCHECK ") and "/readyz" in ln for ln in lines)
    assert lines[-1] == 'CMD ["lethe", "serve"]'
    assert any(ln.startswith("USER ") and "root" not in ln for ln in lines)


def test_the_cuda_base_is_chosen_at_build_time(compose, resolved):
    assert resolved["services"]["migrate"]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    cuda = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
    r = compose("config", LETHE_BASE_IMAGE=cuda, LETHE_TAG="cuda")
    assert r.returncode == 0, r.stderr
    svc = yaml.safe_load(r.stdout)["services"]
    assert svc["migrate"]["build"]["args"]["BASE_IMAGE"] == cuda
    assert {svc[n]["image"] for n in ("migrate", "api", "worker", "worker-2")} == {"lethe:cuda"}


def test_the_image_installs_the_mlflow_extra_by_default():
    """The image's requirements come from pyproject.toml through the Dockerfile's own snippet, run
    here as the build runs it: the default EXTRAS add the MLflow client, EXTRAS="" leaves it out."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    default = re.search(r'^ARG EXTRAS="([^"]*)"', text, re.M).group(1)
    snippet = re.search(r"python -c '([^']+)' > /tmp/requirements.txt", text).group(1)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]

    def requirements(extras):
        r = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env={**os.environ, "EXTRAS": extras},
                           capture_output=True, text=True, check=True)
        return r.stdout.split()

    assert requirements(default) == project["dependencies"] + project["optional-dependencies"]["mlflow"]
    assert requirements("") == project["dependencies"]
