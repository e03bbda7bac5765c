"""Loading a version's weights on a worker: from local disk (LETHE_REGISTRY_DIR) vs from the
object store (LETHE_REGISTRY_URL) on a node that has no copy (download, sha256 checked as
the bytes arrive, then loaded with safetensors) vs from that node's cache afterwards.

The object store is moto's standalone S3 server on loopback (``bench.scale.S3Server``): the
figures show the cost of the path (an HTTP GET, hashing, a second write), not a real network's
bandwidth. Each figure is the median of ``--repeat`` loads of ``registry.load_version``.

    python -m bench.weights_store            # writes bench/results/weights_store.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {  # name: (arch, input shape, classes, arch params)
    "resnet18-cifar": ("resnet18", (3, 32, 32), 10, None),
    "mlp-4096": ("mlp", (1, 64, 64), 10, {"widths": [4096, 4096, 2048]}),
}


def measure(name: str, spec, tmp: str, url: str, repeat: int) -> dict:
    from app.registry import service as registry
    from app.registry.models import ModelVersion
    from app.registry.storage import WeightStore
    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    arch, shape, k, params = spec
    writer = WeightStore(os.path.join(tmp, "writer"), url)
    t = writer.tmp_path(name)
    sha = save_checkpoint(build_model(arch, shape, k, params), t, arch=arch, dataset="bench", input_shape=shape,
                          classes=[str(i) for i in range(k)], arch_params=params)
    rel = writer.publish(t, f"{name}/{sha}.safetensors")
    v = ModelVersion(model_name=name, version=1, sha256=sha, storage_path=rel)
    size = os.path.getsize(writer.path(rel))
    local = WeightStore(os.path.join(tmp, "writer"))  # the same files, read as a local registry

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    loc, cold, warm = [], [], []
    for i in range(repeat):  # interleaved, so that the load of a shared machine falls on all three alike
        loc.append(timed(lambda: registry.load_version(local, v)))
        node = WeightStore(os.path.join(tmp, f"node-{i}"), url)  # a node that never held the weights
        cold.append(timed(lambda: registry.load_version(node, v)))
        warm.append(timed(lambda: registry.load_version(node, v)))
        shutil.rmtree(node.root)
    return {"model": name, "bytes": size, "local_s": round(statistics.median(loc), 4), "s3_cold_s": round(statistics.median(cold), 4),
            "s3_cached_s": round(statistics.median(warm), 4), "repeat": repeat}


def main(argv=None) -> int:
    from bench.scale import S3Server

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "weights_store.json"))
    a = p.parse_args(argv)
    rows = []
    with S3Server() as s3:
        url = s3.url.replace("/datasets?", "/registry?")
        for name, spec in MODELS.items():
            tmp = tempfile.mkdtemp(prefix="lethe-weights-")
            try:
                rows.append(measure(name, spec, tmp, url, a.repeat))
                print(json.dumps(rows[-1]), flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    meta = {"note": __doc__.split("\n\n")[0].replace("\n", " "),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "server": "moto_server (loopback)"}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
