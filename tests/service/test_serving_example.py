"""End to end: examples/serving/server.py next to a live Lethe gateway. It subscribes with a
models:read key, receives the signed events over HTTP, pulls and verifies the new weights,
answers with the new version within seconds of a deletion's publication, and deletes the
purged version's file from its cache after model.version_purged."""
import importlib.util
import os
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from app.db import session_scope
from app.main import create_app
from app.registry import governance
from app.registry import service as registry

from .conftest import MODEL, RecordingDispatcher, ROOT_DIR, bearer, make_key
from .test_registry_events import _complete_a_deletion

pytestmark = pytest.mark.slow
SECRET = "whsec-serving-example"


def load_example():
    spec = importlib.util.spec_from_file_location("serving_example",
                                                  os.path.join(ROOT_DIR, "examples", "serving", "server.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


class Live:
    """A uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.05)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def serving_pair(settings, tmp_path, example):
    """A live gateway delivering webhooks every 50 ms, and the example node subscribed to it."""
    s = settings.model_copy(update={"callback_allow": "127.0.0.0/8", "webhook_secret": SECRET,
                                    "webhook_poll_s": 0.05, "webhook_backoff_s": 0.2})
    gateway = Live(create_app(s, dispatcher=RecordingDispatcher()))
    cfg = example.Config(lethe_url=gateway.url, api_key=make_key(s, ["models:read"], "serving-example"),
                         webhook_secret=SECRET, model=MODEL, public_url="", cache_dir=str(tmp_path / "cache"))
    node = example.ServingNode(cfg)
    front = Live(example.create_app(node))
    node.cfg.public_url = front.url
    node.start()
    return s, gateway, node, front


def wait_for(check, timeout=10.0):
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_a_deletion_reaches_the_example_server_and_purged_weights_leave_its_disk(seeded, tmp_path):
    example = load_example()
    s, gateway, node, front = serving_pair(seeded, tmp_path, example)
    try:
        x = [[[0.5] * 8] * 8]
        first = httpx.post(front.url + "/predict", json={"inputs": [x]}).json()
        assert first["version"] == 1
        old = node.path_of(first["sha256"])
        assert os.path.exists(old)
        ops = {"operator": bearer(make_key(s, ["models:admin", "forget:write", "forget:read"], "ops"))}
        with httpx.Client(base_url=gateway.url) as c:  # the worker's publishing transaction; the purge below
            _, sha2 = _complete_a_deletion(c, ops, s, purge=False)
        published = time.monotonic()
        wait_for(lambda: httpx.post(front.url + "/predict", json={"inputs": [x]}).json()["version"] == 2)
        served_after = time.monotonic() - published
        answer = httpx.post(front.url + "/predict", json={"inputs": [x]}).json()
        assert answer["sha256"] == sha2 and served_after < 5, served_after
        assert os.path.exists(old)  # not purged yet
        with session_scope(s.database_url) as db:
            assert governance.purge_superseded(db, registry.weights(s), MODEL, actor="worker:w1") == [1]
        wait_for(lambda: not os.path.exists(old), timeout=5)
        assert os.path.exists(node.path_of(sha2))
        # a duplicate or tampered delivery changes nothing; a gap makes the node resync
        assert httpx.post(front.url + "/events", content=b'{"id":"x"}',
                          headers={"Lethe-Timestamp": str(int(time.time())), "Lethe-Signature": "v1=00"}
                          ).status_code == 401
        node.sequence = 1  # as if events 2 and 3 had been lost
        node.apply({"id": "gap-test", "event": "model.alias_moved", "model": MODEL, "sequence": 9,
                    "data": {"alias": "production", "to_version": 1, "sha256": first["sha256"]}})
        assert node.served.version == 2 and node.sequence == 3 and node.log[-1]["resync"].startswith("gap")
    finally:
        node.stop()
        front.stop()
        gateway.stop()
