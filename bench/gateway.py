"""Gateway throughput against the floor of its own stack (issue 16). A script, not a test:

    flock /tmp/lethe-bench.lock python -m bench.gateway [--duration 15] [--processes 1 2]

For each number of gateway processes it starts, on loopback, (1) the floor — a bare
FastAPI + SQLAlchemy app (``bench/floor.py``) that inserts one row into Postgres (POST) or
reads one row by primary key (GET), with the same engine and uvicorn settings as Lethe —
and (2) Lethe on Postgres (``lethe serve``, no worker consuming: jobs stay queued; the load
carries a portal's ``forget:write`` key, so the tenant policy is on the path), each on
a fresh database created here and dropped after. The same load drives both: ``--concurrency``
(32) clients for ``--duration`` seconds after a short warm-up, every POST naming a fresh
catalogued instance id. Runs: floor POST and GET; Lethe ``POST /v1/forget`` with 0 and
``--backlog`` (10,000) requests already pending (recorded through the real submit path);
Lethe ``GET /v1/forget/{id}`` polling one request.

The load generator is ``wrk`` (with a Lua script for fresh ids) when installed, else an
asyncio httpx client (``--generator python``; it costs more CPU on the same machine).
Rows go to ``bench/results/gateway.json``: ``endpoint, backlog, concurrency, processes,
rps, p50_ms, p99_ms, floor_rps, non_2xx`` (``floor_rps``: the floor's POST for POST rows,
its GET for GET rows, same number of processes).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
MODEL = "bench-model"
KEY = "bench-admin-" + uuid.uuid4().hex
SECRET = "bench-subject-secret-" + uuid.uuid4().hex  # a deployment refuses short or default secrets


# --- databases ---------------------------------------------------------------------------

def create_db() -> tuple[str, str]:
    import psycopg

    name = f"lethe_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return PG_URL.format(name=name), name


def drop_db(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def instance_id(i: int) -> str:
    return f"b-{i:07d}"


def seed_lethe(url: str, tmp: str, n_instances: int, backlog: int) -> str:
    """Migrate, register the model, catalogue ``n_instances`` ids (rows only: submitting
    reads no raw data) and record ``backlog`` pending requests through ``forget.submit``.
    Returns a portal's API key (``forget:write`` + ``forget:read``, the default tenant): the
    load goes through the path a data-subject portal takes, tenant policy included."""
    import psycopg

    from app.audit import service as audit
    from app.cli import migrate
    from app.db import session_scope
    from app.forget import service as forget
    from app.forget.schemas import ForgetCreate
    from app.registry import service as registry
    from app.security import FORGET_READ, FORGET_WRITE, create_key

    settings = _settings(url, tmp)
    migrate(settings)
    with session_scope(url) as db:
        registry.register_model(db, name=MODEL, dataset="digits", arch="mlp", input_shape=[64],
                                classes=[str(c) for c in range(10)])
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        with con.cursor().copy("COPY catalogue_instances (model_name, instance_id, dataset, label, content_hash, "
                               "storage_uri) FROM STDIN") as copy:
            for i in range(n_instances):
                copy.write_row((MODEL, instance_id(i), "digits", i % 10, "0" * 64, "none"))

    def batch(start: int) -> None:
        with session_scope(url) as db:
            for i in range(start, min(backlog, start + 250)):
                forget.submit(db, settings, ForgetCreate(model=MODEL, instance_ids=[instance_id(i)]),
                              idempotency_key=None, actor="bench")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(batch, range(0, backlog, 250)))
    with session_scope(url) as db:
        audit.drain(db)
        return create_key(db, "bench-portal", [FORGET_WRITE, FORGET_READ], actor="bench")[1]


def open_requests(url: str) -> int:
    """How many requests are pending (queued or running) now: the backlog a run starts with."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        return con.execute("SELECT count(*) FROM forget_requests WHERE status IN ('queued', 'running')").fetchone()[0]


def _settings(url: str, tmp: str):
    from app.settings import Settings

    return Settings(database_url=url, registry_dir=os.path.join(tmp, "registry"), data_dir=os.path.join(tmp, "data"),
                    subject_secret=SECRET, bootstrap_demo=False, embedded_worker=False)


# --- servers -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process started here and stopped by its own PID."""

    def __init__(self, args: list[str], env: dict, log_path: str, health: str):
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{args} exited; see {log_path}")
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{args} not ready; see {log_path}")

    def stop(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        self.log.close()


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETHE_", "BENCH_"))}
    env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return env


def start_lethe(url: str, tmp: str, processes: int) -> tuple[Server, str]:
    port = free_port()
    env = _base_env()
    env.update(LETHE_DATABASE_URL=url, LETHE_REGISTRY_DIR=os.path.join(tmp, "registry"),
               LETHE_DATA_DIR=os.path.join(tmp, "data"), LETHE_SUBJECT_SECRET=SECRET, LETHE_BROKER_URL="",
               LETHE_WEBHOOK_SECRET="bench-webhook-secret-" + uuid.uuid4().hex,
               LETHE_AUDIT_CHECKPOINT_FILE=os.path.join(tmp, "audit", "checkpoints.jsonl"),
               LETHE_EMBEDDED_WORKER="false", LETHE_BOOTSTRAP_DEMO="false", LETHE_BOOTSTRAP_ADMIN_KEY=KEY,
               LETHE_PORT=str(port), LETHE_WEB_CONCURRENCY=str(processes),
               # the load is one caller at hundreds of requests a second: what is measured is the
               # gateway, not the per-caller rate limit (app/security/ratelimit.py)
               LETHE_RATE_SUBMIT_PER_MIN="0", LETHE_RATE_EXPENSIVE_PER_MIN="0")
    srv = Server([sys.executable, "-m", "app.cli", "serve", "--no-migrate"], env,
                 os.path.join(tmp, f"lethe-{processes}-{port}.log"), f"http://127.0.0.1:{port}/healthz")
    return srv, f"http://127.0.0.1:{port}"


def start_floor(url: str, tmp: str, processes: int) -> tuple[Server, str]:
    port = free_port()
    env = _base_env()
    env.update(BENCH_FLOOR_URL=url, BENCH_FLOOR_PORT=str(port), BENCH_FLOOR_WORKERS=str(processes))
    srv = Server([sys.executable, "-m", "bench.floor"], env, os.path.join(tmp, f"floor-{processes}-{port}.log"),
                 f"http://127.0.0.1:{port}/healthz")
    return srv, f"http://127.0.0.1:{port}"


# --- load --------------------------------------------------------------------------------

class Ids:
    """Fresh instance ids: each run takes a range no earlier run used."""

    def __init__(self, first: int, last: int):
        self.next, self.last = first, last

    def take(self, used: int) -> None:
        # wrk threads interleave ids (start + thread + n * threads) and may not run in step: the
        # highest id used is below start + threads * used
        self.next += 2 * used + 64
        if self.next >= self.last:
            raise RuntimeError("catalogue too small for this many requests: raise --instances")


WRK_LUA = r"""
local threads = {}
local n = 0
function setup(thread)
  thread:set("tid", n)
  n = n + 1
  table.insert(threads, thread)
end
counter = 0
request = function()
  if method == "GET" then
    return wrk.format("GET", path, headers, nil)
  end
  local idx = start + tid + counter * nthreads
  counter = counter + 1
  local body = string.format('{"model":"%s","instance_ids":["b-%07d"]}', model, idx)
  return wrk.format("POST", path, headers, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non_2xx":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def run_wrk(base: str, method: str, path: str, *, concurrency: int, duration: float, start: int,
            headers: dict, tmp: str) -> dict:
    threads = min(2, concurrency)
    hdrs = {"Content-Type": "application/json", **headers}
    lua = WRK_LUA.replace("request = function()", "\n".join([
        f'method = "{method}"', f'path = "{path}"', f"start = {start}", f"nthreads = {threads}",
        f'model = "{MODEL}"',
        "headers = {" + ", ".join(f'["{k}"] = "{v}"' for k, v in hdrs.items()) + "}",
        "request = function()"]))
    script = os.path.join(tmp, f"wrk-{uuid.uuid4().hex[:6]}.lua")
    with open(script, "w") as f:
        f.write(lua)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{int(duration)}s",
                          "--timeout", "10s", "-s", script, base], capture_output=True, text=True,
                         timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRK_JSON "):])
    errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {"requests": r["requests"], "seconds": r["duration_us"] / 1e6, "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "non_2xx": r["non_2xx"] + errors}


def run_python(base: str, method: str, path: str, *, concurrency: int, duration: float, start: int,
               headers: dict, tmp: str) -> dict:
    """The same load from asyncio + httpx (one connection per client)."""
    async def main():
        lat: list[float] = []
        bad = 0
        counter = iter(range(start, 10**9))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=10) as c:
            t_end = time.perf_counter() + duration

            async def client():
                nonlocal bad
                while time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    if method == "GET":
                        r = await c.get(path)
                    else:
                        r = await c.post(path, json={"model": MODEL, "instance_ids": [instance_id(next(counter))]})
                    lat.append(time.perf_counter() - t0)
                    bad += r.status_code >= 300
            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            took = time.perf_counter() - t0
        lat.sort()
        return {"requests": len(lat), "seconds": took, "p50_ms": lat[len(lat) // 2] * 1000,
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, "non_2xx": bad}

    return asyncio.run(main())


def measure(gen, ids: Ids | None, base: str, method: str, path: str, args, headers: dict, tmp: str) -> dict:
    """A short warm-up (pools, imports), then the measured run."""
    for seconds in (args.warmup, args.duration):
        start = ids.next if ids else 0
        r = gen(base, method, path, concurrency=args.concurrency, duration=seconds, start=start, headers=headers,
                tmp=tmp)
        if ids:
            ids.take(r["requests"])
    r["rps"] = r["requests"] / r["seconds"]
    return r


# --- the run -----------------------------------------------------------------------------

def row(endpoint: str, backlog: int, processes: int, r: dict, floor_rps: float | None, args) -> dict:
    out = {"endpoint": endpoint, "backlog": backlog, "concurrency": args.concurrency, "processes": processes,
           "rps": round(r["rps"], 1), "p50_ms": round(r["p50_ms"], 1), "p99_ms": round(r["p99_ms"], 1),
           "floor_rps": round(floor_rps, 1) if floor_rps else None, "non_2xx": r["non_2xx"],
           "requests": r["requests"], "seconds": round(r["seconds"], 1)}
    print(json.dumps(out), flush=True)
    return out


def run(args) -> dict:
    gen = run_wrk if args.generator == "wrk" else run_python
    tmp = tempfile.mkdtemp(prefix="lethe-bench-gw-")
    rows = []
    backlog_db, backlog_ids, backlog_key = None, None, None
    for p in args.processes:
        # the floor
        url, name = create_db()
        try:
            srv, base = start_floor(url, tmp, p)
            try:
                ids = Ids(0, 10**7)
                f_post = measure(gen, ids, base, "POST", "/floor", args, {}, tmp)
                one = httpx.post(base + "/floor", json={"model": MODEL, "instance_ids": ["x"]}).json()["id"]
                f_get = measure(gen, None, base, "GET", f"/floor/{one}", args, {}, tmp)
            finally:
                srv.stop()
        finally:
            drop_db(name)
        rows.append(row("floor: POST one-row insert", 0, p, f_post, None, args))
        rows.append(row("floor: GET one row by key", 0, p, f_get, None, args))
        # Lethe, with nothing pending (a fresh database) and with `backlog` requests pending (one
        # database seeded once; later process counts also find the requests earlier runs added)
        for backlog in (0, args.backlog):
            if backlog and backlog_db is None:
                backlog_db = create_db()
                backlog_key = seed_lethe(backlog_db[0], tmp, backlog + args.instances * len(args.processes), backlog)
                backlog_ids = Ids(backlog, backlog + args.instances * len(args.processes))
            url, name = backlog_db if backlog else create_db()
            try:
                portal = backlog_key if backlog else seed_lethe(url, tmp, args.instances, 0)
                auth = {"Authorization": f"Bearer {portal}"}
                srv, base = start_lethe(url, tmp, p)
                try:
                    ids = backlog_ids if backlog else Ids(0, args.instances)
                    pending = open_requests(url)
                    r = measure(gen, ids, base, "POST", "/v1/forget", args, auth, tmp)
                    rows.append(row("POST /v1/forget", pending, p, r, f_post["rps"], args))
                    if not backlog:
                        got = httpx.post(base + "/v1/forget", headers=auth,
                                         json={"model": MODEL, "instance_ids": [instance_id(ids.next)]})
                        ids.take(1)
                        got.raise_for_status()
                        r = measure(gen, None, base, "GET", f"/v1/forget/{got.json()['id']}", args, auth, tmp)
                        rows.append(row("GET /v1/forget/{id}", open_requests(url), p, r, f_get["rps"], args))
                finally:
                    srv.stop()
            finally:
                if not backlog:
                    drop_db(name)
    if backlog_db is not None:
        drop_db(backlog_db[1])
    shutil.rmtree(tmp, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"benchmark": "gateway", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "generator": args.generator, "duration_s": args.duration, "warmup_s": args.warmup,
            "cpus": os.cpu_count(),
            "note": "loopback, one machine: Postgres, the server(s) and the load generator share its CPUs, and the "
                    "machine was shared with other work during the run; compare ratios within one run"
                    + (f". {args.note}" if args.note else ""),
            "command": "python -m bench.gateway " + " ".join(sys.argv[1:]),
            "rows": rows}


def render(result: dict) -> str:
    """The markdown table of docs/benchmarks.md, from the JSON this script wrote."""
    out = ["| processes | endpoint | pending before | requests/s | p50 ms | p99 ms | floor req/s | x floor | non-2xx |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ratio = f"{r['rps'] / r['floor_rps']:.2f}" if r.get("floor_rps") else "—"
        out.append(f"| {r['processes']} | {r['endpoint']} | {r['backlog']:,} | {r['rps']:,.0f} | {r['p50_ms']:.0f} | "
                   f"{r['p99_ms']:.0f} | {r['floor_rps'] or 0:,.0f} | {ratio} | {r['non_2xx']} |"
                   .replace("| 0 | —", "| — | —"))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measured run")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--backlog", type=int, default=10_000, help="requests pending before the second POST run")
    ap.add_argument("--instances", type=int, default=60_000, help="fresh catalogued ids per Lethe database")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--generator", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gateway.json"))
    ap.add_argument("--note", default="", help="added to the result's note (how this run deviated)")
    ap.add_argument("--render", action="store_true", help="print the markdown table of --out and exit")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.out) as f:
            print(render(json.load(f)))
        return 0
    result = run(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
