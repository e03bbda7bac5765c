"""A small inference server that serves the model Lethe forgets, without reading Lethe's disk.

What a serving system has to do after a deletion (docs/serving.md), in one file:

1. subscribe to the model's registry events (``POST /v1/subscriptions``, a ``models:read`` key);
2. on each delivery, verify the signature (HMAC-SHA256 over ``"<timestamp>.<body>"``, fresh
   timestamp), drop duplicates by event ``id`` (delivery is at least once) and, when the
   model's ``sequence`` skips a number, resync from the API instead of trusting its state;
3. on ``model.alias_moved`` of the alias it serves: download the new version's weights
   (``GET /v1/models/{name}/versions/{v}/weights``), check their sha256 against the event's
   and the response's ETag, load them, and swap the served network in one reference
   assignment (requests in flight finish on the old one);
4. on ``model.version_purged``: delete that version's file from its cache (it holds erased
   data).

Run it next to a Lethe gateway::

    LETHE_URL=http://127.0.0.1:8000 LETHE_API_KEY=<models:read key> LETHE_WEBHOOK_SECRET=... \\
    MODEL=mnist-cnn PUBLIC_URL=http://127.0.0.1:9000 python examples/serving/server.py --port 9000

``POST /predict {"inputs": [...]}`` answers with the version and sha256 that served it.
It needs torch, safetensors, fastapi, uvicorn, httpx and Lethe's ML core (``models/``) to
rebuild the network from the file's metadata.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("serving-example")
TOLERANCE_S = 300


@dataclasses.dataclass
class Config:
    lethe_url: str
    api_key: str
    webhook_secret: str
    model: str
    public_url: str  # where Lethe can reach this server's /events
    cache_dir: str
    alias: str = "production"


@dataclasses.dataclass(frozen=True)
class Served:
    version: int
    sha256: str
    net: object
    meta: dict


def verify(secret: str, body: bytes, timestamp: str, signature: str) -> bool:
    """Lethe's signature recipe: v1=HMAC-SHA256(secret, "<timestamp>.<body>"), fresh timestamp."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("v1=" + mac, signature or "")


class ServingNode:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        os.makedirs(cfg.cache_dir, exist_ok=True)
        self.http = httpx.Client(base_url=cfg.lethe_url, headers={"Authorization": f"Bearer {cfg.api_key}"},
                                 timeout=60)
        self.served: Served | None = None
        self.seen: set[str] = set()  # event ids applied (dedupe)
        self.sequence = 0  # the last model event applied
        self.subscription: str | None = None
        self.events: queue.Queue = queue.Queue()
        self.log: list[dict] = []  # what happened, for whoever watches (tests, the benchmark)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._apply_loop, name="serving-events", daemon=True)

    # --- start / stop -------------------------------------------------------------------------

    def start(self) -> None:
        r = self.http.post("/v1/subscriptions", json={"url": self.cfg.public_url.rstrip("/") + "/events",
                                                      "model": self.cfg.model})
        r.raise_for_status()
        self.subscription = r.json()["id"]
        self.resync("start")
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self.events.put(None)
        if self.subscription:
            try:
                self.http.delete(f"/v1/subscriptions/{self.subscription}")
            except httpx.HTTPError:
                pass
        self.http.close()

    # --- weights ------------------------------------------------------------------------------

    def path_of(self, sha256: str) -> str:
        return os.path.join(self.cfg.cache_dir, f"{sha256}.safetensors")

    def pull(self, version: int, expected_sha256: str | None = None) -> str:
        """Download a version's weights into the cache (a .part file renamed only once its
        sha256 equals the registry's); returns the sha256."""
        tmp = os.path.join(self.cfg.cache_dir, f".v{version}-{threading.get_ident()}.part")
        h = hashlib.sha256()
        with self.http.stream("GET", f"/v1/models/{self.cfg.model}/versions/{version}/weights") as r:
            r.raise_for_status()
            announced = r.headers["etag"].strip('"')
            with open(tmp, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
        got = h.hexdigest()
        if got != announced or (expected_sha256 and got != expected_sha256):
            os.unlink(tmp)
            raise ValueError(f"v{version}: sha256 {got} is not the registry's {expected_sha256 or announced}")
        os.replace(tmp, self.path_of(got))
        return got

    def serve(self, version: int, sha256: str) -> None:
        from models.checkpoint import load_checkpoint

        if self.served is not None and self.served.sha256 == sha256:
            return
        path = self.path_of(sha256)
        if not os.path.exists(path):
            self.pull(version, sha256)
        net, meta = load_checkpoint(path, device="cpu")
        self.served = Served(version, sha256, net, meta)  # the swap: one reference assignment
        self.log.append({"at": time.time(), "serving": version, "sha256": sha256})

    def resync(self, why: str) -> None:
        """Ask the registry what the alias serves now (after a start or a gap in the sequence)."""
        r = self.http.get(f"/v1/models/{self.cfg.model}/versions")
        r.raise_for_status()
        body = r.json()
        version = body["aliases"][self.cfg.alias]
        sha = next(v["sha256"] for v in body["versions"] if v["version"] == version)
        self.serve(version, sha)
        for v in body["versions"]:  # whatever was purged meanwhile leaves the cache
            if v["status"] == "PURGED":
                self.forget_file(v["sha256"])
        ev = self.http.get("/v1/events", params={"model": self.cfg.model, "after": self.sequence}).json()
        self.sequence = max([self.sequence, *(e["sequence"] or 0 for e in ev)])
        self.log.append({"at": time.time(), "resync": why, "sequence": self.sequence})

    def forget_file(self, sha256: str) -> None:
        if self.served is not None and self.served.sha256 == sha256:
            return  # never delete what serves (Lethe never purges what an alias serves)
        try:
            os.unlink(self.path_of(sha256))
            self.log.append({"at": time.time(), "deleted": sha256})
        except FileNotFoundError:
            pass

    # --- events -------------------------------------------------------------------------------

    def receive(self, body: bytes, headers) -> int:
        """The webhook: 401 unless signed; 200 as soon as the event is queued (applied in order
        by one thread)."""
        if not verify(self.cfg.webhook_secret, body, headers.get("lethe-timestamp", ""),
                      headers.get("lethe-signature", "")):
            return 401
        self.events.put(json.loads(body))
        return 200

    def _apply_loop(self) -> None:
        while not self._stop.is_set():
            e = self.events.get()
            if e is None:
                return
            try:
                self.apply(e)
            except Exception:  # noqa: BLE001 - one bad event must not stop the node; resync instead
                log.exception("event %s failed; resyncing", e.get("id"))
                self.resync("error")

    def apply(self, e: dict) -> None:
        if e["id"] in self.seen:
            return  # a duplicate delivery
        self.seen.add(e["id"])
        seq = e.get("sequence")
        if seq is not None and seq <= self.sequence:
            return  # already covered by a resync
        if seq is not None and seq != self.sequence + 1:
            self.resync(f"gap: expected {self.sequence + 1}, got {seq}")
            return
        if seq is not None:
            self.sequence = seq
        d = e["data"]
        if e["event"] == "model.alias_moved" and d["alias"] == self.cfg.alias:
            self.serve(d["to_version"], d["sha256"])
        elif e["event"] == "model.version_purged":
            self.forget_file(d["sha256"])

    # --- inference ----------------------------------------------------------------------------

    def predict(self, inputs) -> dict:
        import numpy as np
        import torch

        s = self.served  # one read: this request uses one version from start to end
        x = np.asarray(inputs, dtype=np.float32).reshape((-1, *s.meta["input_shape"]))
        with torch.no_grad():
            p = torch.softmax(s.net(torch.from_numpy(x)), dim=1)
        conf, labels = p.max(dim=1)
        return {"model": self.cfg.model, "version": s.version, "sha256": s.sha256,
                "predictions": [{"label": int(a), "confidence": float(b)} for a, b in zip(labels, conf)]}


def create_app(node: ServingNode):
    app = FastAPI(title="serving example")

    @app.post("/events")
    async def events(request: Request):
        code = node.receive(await request.body(), request.headers)
        return JSONResponse({"ok": code == 200}, status_code=code)

    @app.post("/predict")
    def predict(body: dict):
        return node.predict(body["inputs"])

    @app.get("/healthz")
    def healthz():
        s = node.served
        return {"model": node.cfg.model, "version": s.version if s else None, "sha256": s.sha256 if s else None,
                "sequence": node.sequence}

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--cache-dir", default=os.environ.get("CACHE_DIR", "./serving-cache"))
    a = p.parse_args()
    node = ServingNode(Config(lethe_url=os.environ["LETHE_URL"], api_key=os.environ["LETHE_API_KEY"],
                              webhook_secret=os.environ["LETHE_WEBHOOK_SECRET"], model=os.environ["MODEL"],
                              public_url=os.environ.get("PUBLIC_URL", f"http://127.0.0.1:{a.port}"),
                              cache_dir=a.cache_dir, alias=os.environ.get("ALIAS", "production")))
    node.start()
    try:
        uvicorn.run(create_app(node), host="127.0.0.1", port=a.port)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
