"""End-to-end fixtures: real processes (uvicorn gateway, Celery worker) started here and
stopped by PID; a fresh database per run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from conftest import require_service  # noqa: F401 (tests/conftest.py; e2e tests import it from here)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(LETHE_DATABASE_URL=f"sqlite:///{tmp_path}/lethe.db", LETHE_REGISTRY_DIR=str(tmp_path / "registry"),
               LETHE_DATA_DIR=str(tmp_path / "data"), LETHE_DEMO_DATASET="digits",
               LETHE_SUBJECT_SECRET="e2e-secret-" + uuid.uuid4().hex, LETHE_BROKER_URL="",
               LETHE_DEVICE="cpu", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1",
               # the first admin key, registered at start the way an operator would (README)
               LETHE_BOOTSTRAP_ADMIN_KEY="e2e-admin-" + uuid.uuid4().hex,
               LETHE_WEBHOOK_SECRET="e2e-whsec-" + uuid.uuid4().hex,
               LETHE_AUDIT_CHECKPOINT_FILE=str(tmp_path / "audit-anchor" / "checkpoints.jsonl"),
               LETHE_CALLBACK_ALLOW="127.0.0.0/8",  # the test receiver listens on loopback
               LETHE_DEMO_EXACT_DATASET="",  # no exact demo unless a test asks (tests/e2e/test_exact_celery.py)
               LETHE_RISK_REFERENCE_MODELS="0",  # the risk job is tested in tests/service/test_membership_risk.py
               LETHE_ERASE_WITHIN_S="4")  # erased rows' bytes compacted away within seconds, not the hour
    env.update({k: str(v) for k, v in extra.items()})
    return env


def auth(env: dict) -> dict:
    return {"Authorization": f"Bearer {env['LETHE_BOOTSTRAP_ADMIN_KEY']}"}


class Proc:
    """A child process with its output in a log file; stopped by its own PID."""

    def __init__(self, args, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n=4000) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]

    def stop(self) -> None:
        if self.alive():
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        self.log.close()


def start_gateway(env, tmp_path, name="gateway", timeout=420) -> tuple[Proc, str]:
    port = free_port()
    env = {**env, "LETHE_PORT": str(port)}
    proc = Proc([sys.executable, "-m", "app.cli", "serve"], env, tmp_path / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout  # first start migrates, trains and catalogues the demo model
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"gateway exited:\n{proc.tail()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.stop()
    raise RuntimeError(f"gateway not ready after {timeout}s:\n{proc.tail()}")

