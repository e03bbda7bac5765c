"""Serving the forgotten model: how fast a deletion reaches a server outside Lethe. A script,
not a test:

    nice -n 10 python -m bench.serving [--deletions 20] [--big-deletions 5] [--big-mb 100]

On loopback it starts a real ``mlflow server`` (``.venv-mlflow``, SQLite backend store, local
artifact root), a Lethe gateway (uvicorn, SQLite, webhook pump every 50 ms, MLflow mirror
every 0.2 s) and the example inference server (``examples/serving/server.py``) subscribed to
the model's events with a ``models:read`` key. Two models: the demo CNN (MNIST-shaped, 28x28)
and an MLP with random weights whose file is about ``--big-mb`` MB (ResNet-50-sized).

Each deletion: ``POST /v1/forget`` for one catalogued instance, then this script does a
worker's part through Lethe's own publishing path (``jobs.claim``, a new weights file
written through the registry, ``jobs.complete``, ``governance.purge_superseded``). The new
weights are the current ones with a small perturbation: the unlearning computation itself
is not part of this measure (bench.instance and bench.ulira measure it); what is measured
is everything between a deletion and the servers outside Lethe:

- ``forget_to_served``: from the POST to the example server answering ``/predict`` with the
  new version (claim, weights written, publishing transaction, event delivered, weights
  downloaded and verified, network loaded and swapped);
- ``event``: from the publishing transaction's commit to the example server receiving
  ``model.alias_moved`` (its log's time of the swap is later: it then downloads);
- ``mlflow_alias``: from the commit to MLflow's ``production`` alias naming the new version;
- ``mlflow_purge``: from the purge's commit to the old version's file gone from MLflow's
  artifact store;
- ``download_mb_per_s``: ``GET .../weights`` of the current version by curl (median of 3),
  and ``gateway_peak_mb``: the gateway process's peak RSS growth during those
  downloads (this process's resident set sampled every 5 ms; curl downloads).

Rows go to ``bench/results/serving.json``, one per model.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "serving.json")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- serving:begin (python -m bench.serving writes this block) -->", "<!-- serving:end -->"
TARGETS = {"event_p99_s": 2.0, "mlflow_alias_p99_s": 5.0, "mlflow_purge_s": 60.0, "download_mb_per_s": 200.0}
SECRET = "bench-serving-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(tmp: str) -> tuple[subprocess.Popen, str, str]:
    exe = os.path.join(ROOT, ".venv-mlflow", "bin", "mlflow")
    if not os.path.exists(exe):
        sys.exit("no MLflow server: run `make mlflow-venv`")
    port, art = free_port(), os.path.join(tmp, "mlflow-artifacts")
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", art],
                            stdout=open(os.path.join(tmp, "mlflow.log"), "wb"), stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, art
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("mlflow server did not start: " + open(os.path.join(tmp, "mlflow.log")).read()[-2000:])
        time.sleep(0.5)


class Live:
    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.05)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def register(settings, name: str, arch: str, shape: list[int], params: dict | None, n: int) -> None:
    """Version 1 (random weights), production, ``n`` catalogued rows (rows only)."""
    import torch

    from app.catalogue.models import TrainingInstance
    from app.db import session_scope
    from app.registry import service as registry
    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    torch.manual_seed(0)
    net = build_model(arch, shape, 10, params)
    os.makedirs(os.path.join(settings.registry_dir, name), exist_ok=True)
    tmp = registry.weights_tmp_path(registry.weights(settings), name)
    sha = save_checkpoint(net, tmp, arch=arch, dataset="bench", input_shape=shape, classes=[str(c) for c in range(10)],
                          arch_params=params)
    rel = registry.publish_weights(registry.weights(settings), name, tmp, sha)
    with session_scope(settings.database_url) as db:
        registry.register_model(db, name=name, dataset="bench", arch=arch, input_shape=shape,
                                classes=[str(c) for c in range(10)], arch_params=params)
        registry.add_version(db, model_name=name, sha256=sha, storage_path=rel, parent_version=None, job_id=None,
                             metrics=None)
        registry.move_alias(db, model_name=name, alias="production", to_version=1, actor="bench")
        db.bulk_insert_mappings(TrainingInstance, [
            {"model_name": name, "instance_id": f"{name}-{i:05d}", "dataset": "bench", "label": i % 10,
             "content_hash": "0" * 64, "storage_uri": "none"} for i in range(n)])


def publish_next(settings, name: str, job_id: str) -> tuple[int, float, float]:
    """A worker's part: claim, write the next weights through the registry, complete, purge.
    Returns (version, commit time of the publication, commit time of the purge)."""
    from app.db import session_scope
    from app.jobs import service as jobs
    from app.registry import governance
    from app.registry import service as registry
    from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint

    with session_scope(settings.database_url) as db:
        claim = jobs.claim(db, job_id, worker="bench", lease_s=600)
        cur = registry.resolve_alias(db, name)
        path = registry.absolute_path(registry.weights(settings), cur.storage_path)
    net, meta = load_checkpoint(path)
    import torch

    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    tmp = registry.weights_tmp_path(registry.weights(settings), name)
    sha = save_checkpoint(net, tmp, arch=meta["arch"], dataset=meta["dataset"], input_shape=meta["input_shape"],
                          classes=meta["classes"], arch_params=meta.get("arch_params"))
    rel = registry.publish_weights(registry.weights(settings), name, tmp, sha)
    with session_scope(settings.database_url) as db:
        job = jobs.complete(db, job_id=job_id, token=claim.token, worker="bench", instance_ids=claim.instance_ids,
                            sha256=sha, storage_path=rel, metrics={"bench": True}, stats=None)
        version = job.result_version
    published = time.monotonic()
    with session_scope(settings.database_url) as db:
        governance.purge_superseded(db, registry.weights(settings), name, actor="worker:bench")
    purged = time.monotonic()
    assert file_sha256(os.path.join(settings.registry_dir, rel)) == sha
    return version, published, purged


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def run_model(settings, gateway, example, mlflow_url, artifacts, label, name, arch, shape, params, deletions):
    from mlflow.tracking import MlflowClient

    from app.security import MODELS_ADMIN, FORGET_READ, FORGET_WRITE, MODELS_READ, create_key
    from app.db import session_scope

    register(settings, name, arch, shape, params, deletions + 5)
    with session_scope(settings.database_url) as db:
        ops = create_key(db, f"bench-ops-{name}", [MODELS_ADMIN, FORGET_WRITE, FORGET_READ], actor="bench")[1]
        serving_key = create_key(db, f"bench-serving-{name}", [MODELS_READ], actor="bench")[1]
    cache = tempfile.mkdtemp(prefix=f"serving-{name}-", dir=os.path.dirname(settings.registry_dir))
    node = example.ServingNode(example.Config(lethe_url=gateway.url, api_key=serving_key, webhook_secret=SECRET,
                                              model=name, public_url="", cache_dir=cache))
    front = Live(example.create_app(node))
    node.cfg.public_url = front.url
    node.start()
    client = MlflowClient(mlflow_url)
    x = np.zeros((1, *shape), dtype=np.float32).tolist()
    out = {"served": [], "event": [], "alias": [], "purge": []}
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {ops}"}, timeout=120)

    def mlflow_alias_is(sha: str) -> bool:
        try:
            return client.get_model_version_by_alias(name, "production").tags.get("lethe.sha256") == sha
        except Exception:  # noqa: BLE001 - not there yet
            return False

    def in_store(sha: str) -> bool:
        return any(f == f"{sha}.safetensors" for _, _, fs in os.walk(artifacts) for f in fs)

    wait_until(lambda: mlflow_alias_is(node.served.sha256), 120)  # version 1 mirrored first
    try:
        for i in range(deletions):
            old_sha = node.served.sha256
            t0 = time.monotonic()
            r = http.post("/v1/forget", json={"model": name, "instance_ids": [f"{name}-{i:05d}"]})
            r.raise_for_status()
            version, published, purged = publish_next(settings, name, r.json()["job_id"])
            got_event = {}
            wait_until(lambda: any(e.get("serving") == version for e in node.log), 60)
            wait_until(lambda: _post(front.url, x)["version"] == version, 60)
            out["served"].append(time.monotonic() - t0)
            for e in node.log:
                if e.get("serving") == version:
                    got_event["at"] = e["at"]
            with session_scope(settings.database_url) as db:
                from app.webhooks.models import WebhookDelivery
                from sqlalchemy import select

                d = db.execute(select(WebhookDelivery).where(WebhookDelivery.event == "model.alias_moved",
                                                             WebhookDelivery.url.like(f"{front.url}%"))
                               .order_by(WebhookDelivery.created_at.desc()).limit(1)).scalar_one()
                delivered = (d.delivered_at - d.created_at).total_seconds()
            out["event"].append(delivered)
            new_sha = node.served.sha256
            wait_until(lambda: mlflow_alias_is(new_sha), 120)
            out["alias"].append(time.monotonic() - published)
            wait_until(lambda: not in_store(old_sha), 180)
            out["purge"].append(time.monotonic() - purged)
            print(f"  {label} deletion {i + 1}/{deletions}: served {out['served'][-1]:.2f} s, event "
                  f"{out['event'][-1]:.3f} s, mlflow alias {out['alias'][-1]:.2f} s, purge {out['purge'][-1]:.2f} s",
                  flush=True)
        rates, peak = download(gateway.url, serving_key, name, node.served.version)
    finally:
        node.stop()
        front.stop()
        http.close()
    size = os.path.getsize(node.path_of(node.served.sha256)) / 1e6
    return {"model": label, "weights_mb": round(size, 1), "deletions": deletions,
            "forget_to_served_p50_s": pct(out["served"], 50), "forget_to_served_p99_s": pct(out["served"], 99),
            "event_p50_s": pct(out["event"], 50), "event_p99_s": pct(out["event"], 99),
            "mlflow_alias_p50_s": pct(out["alias"], 50), "mlflow_alias_p99_s": pct(out["alias"], 99),
            "mlflow_purge_s": pct(out["purge"], 99), "download_mb_per_s": round(float(np.median(rates)), 1),
            "gateway_peak_mb": round(peak, 1)}


def _post(url: str, x) -> dict:
    return httpx.post(url + "/predict", json={"inputs": x}, timeout=30).json()


def wait_until(check, timeout: float) -> None:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(0.01)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def download(gateway_url: str, key: str, name: str, version: int) -> tuple[list[float], float]:
    """MB/s of three full downloads by curl (another process: the gateway has this one's
    CPU to itself), and the gateway's memory growth during them: this process's resident
    set sampled every 5 ms, peak minus the level before (MB)."""
    before, peak, stop = rss_mb(), [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rates = []
    try:
        for _ in range(3):
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                                  "-H", f"Authorization: Bearer {key}",
                                  f"{gateway_url}/v1/models/{name}/versions/{version}/weights"],
                                 capture_output=True, text=True, check=True).stdout.split()
            rates.append(int(out[0]) / 1e6 / float(out[1]))
    finally:
        stop.set()
        t.join()
    return rates, max(0.0, peak[0] - before)


def render(doc: dict) -> str:
    """The docs/benchmarks.md block, from the JSON."""
    def mark(key, v):
        if v is None or key not in TARGETS:
            return f"{v}"
        ok = v >= TARGETS[key] if key == "download_mb_per_s" else v <= TARGETS[key]
        return f"{v}" + ("" if ok else " (target " + ("≥" if key == "download_mb_per_s" else "≤") + f" {TARGETS[key]:g})")

    lines = [f"Run of {doc['at']} ({doc['cpus']} CPU cores shared with other work; load average "
             f"{doc['load_avg']:.1f} at the end). Seconds; p50 / p99 over the deletions of each row.", "",
             "| model | weights MB | deletions | POST → served p50 / p99 | event delivered p50 / p99 | "
             "MLflow alias p50 / p99 | purge gone from MLflow (worst) | download MB/s | gateway memory growth MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['weights_mb']} | {r['deletions']} | {r['forget_to_served_p50_s']} / "
                     f"{r['forget_to_served_p99_s']} | {r['event_p50_s']} / {mark('event_p99_s', r['event_p99_s'])} | "
                     f"{r['mlflow_alias_p50_s']} / {mark('mlflow_alias_p99_s', r['mlflow_alias_p99_s'])} | "
                     f"{mark('mlflow_purge_s', r['mlflow_purge_s'])} | {mark('download_mb_per_s', r['download_mb_per_s'])}"
                     f" | {r['gateway_peak_mb']} |")
    return "\n".join(lines)


def write_docs(doc: dict) -> None:
    with open(DOCS) as f:
        text = f.read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    with open(DOCS, "w") as f:
        f.write(text[:start] + "\n\n" + render(doc) + "\n\n" + text[end:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deletions", type=int, default=20, help="deletions on the demo model")
    p.add_argument("--big-deletions", type=int, default=5, help="deletions on the large model")
    p.add_argument("--big-mb", type=float, default=100.0, help="size of the large model's weights file")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md from the JSON")
    a = p.parse_args(argv)
    if a.render:
        with open(a.out) as f:
            write_docs(json.load(f))
        return 0
    sys.path.insert(0, os.path.join(ROOT, "examples", "serving"))
    import importlib

    example = importlib.import_module("server")
    from app.cli import migrate
    from app.main import create_app
    from app.settings import Settings

    tmp = tempfile.mkdtemp(prefix="lethe-bench-serving-")
    mlflow_proc, mlflow_url, artifacts = start_mlflow(tmp)
    settings = Settings(registry_dir=os.path.join(tmp, "registry"), data_dir=os.path.join(tmp, "data"),
                        database_url=f"sqlite:///{tmp}/lethe.db", subject_secret="bench", broker_url="",
                        bootstrap_demo=False, embedded_worker=False, sweeper_interval_s=0, webhook_poll_s=0.05,
                        webhook_backoff_s=0.2, webhook_secret=SECRET, callback_allow="127.0.0.0/8",
                        audit_checkpoint_poll_s=0, mlflow_tracking_uri=mlflow_url, mlflow_sync_s=0.2)
    migrate(settings)

    class NoDispatch:
        def dispatch(self, job_id):
            pass

        def ready(self):
            return True, "ok"

    gateway = Live(create_app(settings, dispatcher=NoDispatch()))
    rows = []
    try:
        rows.append(run_model(settings, gateway, example, mlflow_url, artifacts, "demo cnn (28x28)", "bench-cnn",
                              "cnn", [1, 28, 28], None, a.deletions))
        hidden = int((a.big_mb * 1e6 / 4 - 4096 * 10) / (4096 + 1))  # one hidden layer: ~big_mb of float32
        rows.append(run_model(settings, gateway, example, mlflow_url, artifacts, f"mlp ~{a.big_mb:.0f} MB", "bench-big",
                              "mlp", [1, 64, 64], {"widths": [hidden]}, a.big_deletions))
    finally:
        gateway.stop()
        mlflow_proc.terminate()
        mlflow_proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "load_avg": os.getloadavg()[0], "rows": rows}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    if a.out == RESULTS:
        write_docs(result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
