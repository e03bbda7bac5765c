"""A customer's own training pipeline answering Lethe's retrain orders (docs/own-models.md).

    python examples/external_pipeline/pipeline.py --url http://127.0.0.1:8000 --key $KEY \
        --model cancer-ext [--once] [--poll 2] [--include-erased-from FILE.parquet]

It polls ``GET /v1/retrain-orders?status=open`` for its model, claims an order (a one-time
upload credential), downloads the retained rows' snapshot and checks its sha256, trains the
network with plain PyTorch (its own loop, its own code: nothing of Lethe's is imported) with
the order's ``recipe.trainer_params`` and uploads the weights (safetensors), their sha256 and
the instance ids it trained on. ``--include-erased-from`` simulates a broken pipeline that
trains on a stale copy of the data (the erased rows too) and says so; Lethe refuses it.
Prints one JSON line per upload: the HTTP status and Lethe's answer.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn


class Net(nn.Module):
    """The team's network: the layout registered as Lethe's ``mlp`` (body, head)."""

    def __init__(self, d: int, widths: list[int], classes: int):
        super().__init__()
        dims = [d, *widths]
        self.body = nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())])
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        return self.head(self.body(x))


def table_xy(raw: bytes):
    t = pq.read_table(io.BytesIO(raw))
    x = torch.tensor(np.stack(t.column("features").to_numpy(zero_copy_only=False)).astype(np.float32))
    return t.column("instance_id").to_pylist(), x, torch.tensor(t.column("label").to_numpy())


def train(x, y, classes: int, params: dict, widths: list[int]) -> dict:
    torch.manual_seed(int(params.get("seed", 0)))
    net = Net(x.shape[1], widths, classes)
    opt = torch.optim.Adam(net.parameters(), lr=float(params.get("lr", 0.01)))
    for _ in range(int(params.get("epochs", 60))):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def answer(c: httpx.Client, order: dict, stale: str | None) -> tuple[int, dict]:
    claimed = c.post(f"/v1/retrain-orders/{order['id']}/claim").raise_for_status().json()
    snap = c.get(claimed["snapshot"]["url"]).raise_for_status().content
    if hashlib.sha256(snap).hexdigest() != claimed["snapshot"]["sha256"]:
        raise SystemExit("snapshot digest mismatch")
    ids, x, y = table_xy(snap)
    if stale:  # the broken pipeline: its own stale copy still holds the erased rows
        old_ids, ox, oy = table_xy(open(stale, "rb").read())
        extra = [i for i, iid in enumerate(old_ids) if iid not in set(ids)]
        ids, x, y = ids + [old_ids[i] for i in extra], torch.cat([x, ox[extra]]), torch.cat([y, oy[extra]])
    model = c.get(f"/v1/models/{order['model']}").raise_for_status().json()
    params = (claimed["recipe"] or {}).get("trainer_params") or {}
    raw = save(train(x, y, len(model["classes"]), params, model["arch_params"]["widths"]))
    r = c.put(f"/v1/retrain-orders/{order['id']}/weights",
              headers={"X-Order-Token": claimed["upload_token"], "X-Content-SHA256": hashlib.sha256(raw).hexdigest()},
              files={"weights": ("w.safetensors", raw, "application/octet-stream"),
                     "manifest": ("ids.json", json.dumps({"instance_ids": ids}).encode(), "application/json")})
    return r.status_code, r.json()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--poll", type=float, default=2.0)
    ap.add_argument("--once", action="store_true", help="answer one order, then exit")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--include-erased-from", default=None)
    a = ap.parse_args(argv)
    deadline = time.time() + a.timeout
    with httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {a.key}"}, timeout=120) as c:
        while time.time() < deadline:
            open_orders = c.get("/v1/retrain-orders", params={"status": "open", "model": a.model}).json()
            for order in open_orders:
                status, body = answer(c, order, a.include_erased_from)
                print(json.dumps({"order": order["id"], "status": status, "answer": body}), flush=True)
                if a.once:
                    return 0
            time.sleep(a.poll)
    return 1


if __name__ == "__main__":
    sys.exit(main())
