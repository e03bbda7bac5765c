"""Every request completes, at volume (issue 13). A script, not a test:

    flock /tmp/lethe-bench.lock python -m bench.completion [--n 2000] [--dataset mnist5k]

Part 1 (service): a fresh Postgres database, a Redis queue of its own, one Celery worker
(``--pool=solo``) and ``lethe serve`` (whose first start trains and catalogues the demo model
on ``--dataset``), all with the default lease, sweeper and planner settings. ``--n``
single-instance ``POST /v1/forget`` from ``--threads`` clients; then polls until every
request is final. Row: requests, completed, failed, seconds (first POST to last final state),
and ``plans``: per job, its method, exactness, k and the planner's reason.

Part 2 (planner): the pure planner (``app.jobs.planner.plan``) for digits, mnist5k and adult
at k in {1, 8, 32, 128, 1000}, with each demo model's training time (the service run's
recorded ``train_seconds`` for its dataset; the others timed here with the default recipe,
seed 0, ``models.train.train_model``) and no approximate history (a model's first job),
default settings; then each choice against always-retrain and always-approximate, with the
quality and time the instance benchmark measured for that (dataset, k) (``choices_table``:
rows of ``bench/results/instance.json``, nothing rerun; "not measured" where it has none;
``--choices-only`` redoes just this from the stored planner table). Rows go to
``bench/results/completion.json``, and a table to
``docs/benchmarks.md`` (the block between the ``completion`` markers, rewritten from the JSON).

Part 3 (``--consolidation``; ``--consolidation-only`` keeps the stored rows of parts 1-2): the
continual sequence with consolidation against retraining, in process (SQLite, the driver the
workers run): the demo model of ``--cons-dataset`` is trained (``bootstrap_demo``), then
``--cons-requests`` requests of ``--cons-k`` random instances (forget-set seed ``--cons-seed``)
are each served approximately (the planner kept from retraining: ``LETHE_RETRAIN_BELOW_S=0``),
then one consolidation job (``POST /v1/models/{name}/consolidate``'s service) retrains from
scratch. Test accuracy and the accuracy on every instance forgotten so far, of the served model
after the sequence and after the consolidation, against retraining from scratch on the same
retained rows with two other training seeds.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

from bench.gateway import create_db, drop_db, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
OUT = os.path.join(ROOT, "bench", "results", "completion.json")
KS = (1, 8, 32, 128, 1000)


def service_env(tmp: str, db_url: str, queue: str, dataset: str, key: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(LETHE_DATABASE_URL=db_url, LETHE_BROKER_URL=REDIS, LETHE_QUEUE_NAME=queue,
               LETHE_REGISTRY_DIR=os.path.join(tmp, "registry"), LETHE_DATA_DIR=os.path.join(tmp, "data"),
               LETHE_DEMO_DATASET=dataset, LETHE_DEMO_EXACT_DATASET="", LETHE_DEVICE="cpu",
               LETHE_SUBJECT_SECRET="bench-subject-secret-" + uuid.uuid4().hex, LETHE_BOOTSTRAP_ADMIN_KEY=key,
               LETHE_WEBHOOK_SECRET="bench-whsec-" + uuid.uuid4().hex,
               LETHE_AUDIT_CHECKPOINT_FILE=os.path.join(tmp, "audit", "checkpoints.jsonl"),
               PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return env


def spawn(args, env, log_path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def run_service(n: int, dataset: str, threads: int, timeout: float, overrides: dict | None = None) -> dict:
    db_url, db_name = create_db()
    tmp = tempfile.mkdtemp(prefix="lethe-completion-")
    queue = f"lethe-bench-{uuid.uuid4().hex[:8]}"
    key = "bench-admin-" + uuid.uuid4().hex
    env = {**service_env(tmp, db_url, queue, dataset, key), **(overrides or {})}
    port = free_port()
    procs = [spawn([os.path.join(BIN, "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                    "--loglevel=" + os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"), "-n", f"{queue}@%h", "-Q", queue], env, os.path.join(tmp, "celery.log")),
             spawn([sys.executable, "-m", "app.cli", "serve"], {**env, "LETHE_PORT": str(port)},
                   os.path.join(tmp, "gateway.log"))]
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.time() + 900  # the first start trains the demo model
        while True:
            if procs[1].poll() is not None or time.time() > deadline:
                raise RuntimeError(open(os.path.join(tmp, "gateway.log")).read()[-4000:])
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            model = c.get("/v1/models").json()[0]["name"]
            v1 = c.get(f"/v1/models/{model}/versions").json()["versions"][0]
        ids = [f"{dataset}-{i:05d}" for i in range(n)]

        limited = [0] * threads  # 429 answers, per client thread

        def post(t):
            # a well-behaved client: a 429 (the per-caller submit rate limit, one admin key here)
            # is retried after its Retry-After
            out = []
            with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
                for i in ids[t::threads]:
                    while True:
                        r = c.post("/v1/forget", json={"model": model, "instance_ids": [i]})
                        if r.status_code != 429:
                            break
                        limited[t] += 1
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                    out.append(r)
            return out

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(threads) as pool:
            responses = [r for rs in pool.map(post, range(threads)) for r in rs]
        submitted = time.perf_counter() - t0
        accepted = [r.json()["id"] for r in responses if r.status_code == 202]
        rejected = [f"{r.status_code} {r.text[:200]}" for r in responses if r.status_code != 202]
        final: dict[str, dict] = {}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            deadline = time.time() + timeout
            while len(final) < len(accepted) and time.time() < deadline:
                for rid in accepted:
                    if rid not in final:
                        body = c.get(f"/v1/forget/{rid}").json()
                        if body["status"] in ("completed", "failed", "rejected"):
                            final[rid] = body
                        else:
                            break  # jobs finish roughly in order: poll again later
                time.sleep(0.5)
            seconds = time.perf_counter() - t0
            # the job that served each request (a request moved by a split or absorbed by a
            # consolidation shows its final job), in the order the jobs were created
            job_ids = {b["job"]["id"] for b in final.values() if b.get("job")}
            jobs = sorted((c.get(f"/v1/jobs/{j}").json() for j in job_ids), key=lambda j: j["created_at"])
            plans = []
            for job in jobs:
                p = job.get("plan") or {}
                plans.append({"job": job["id"], "status": job["status"], "attempts": job["attempts"],
                              "requests": len(job["request_ids"]), "objective": job["objective"],
                              "created_at": job["created_at"], "started_at": job["started_at"],
                              "finished_at": job["finished_at"],
                              "method": p.get("method"), "exact": p.get("exact"),
                              "k": (p.get("inputs") or {}).get("k"), "reason": p.get("reason"),
                              "fallback_from": p.get("fallback_from"),
                              "job_seconds": (job.get("metrics") or {}).get("job_seconds")})
            verify = c.get("/v1/audit/verify", params={"full": "true"}).json()
        statuses = [b["status"] for b in final.values()]
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            splits = [e for e in c.get("/v1/audit", params={"action": "job.split", "limit": 1000}).json().get("entries", [])]
        return {"dataset": dataset, "model": model, "requests": n, "threads": threads,
                "settings": overrides or {}, "rate_limited_429": sum(limited),
                "accepted": len(accepted), "rejected_at_submit": len(rejected), "rejected_examples": rejected[:5],
                "job_splits": len(splits),
                "completed": statuses.count("completed"), "failed": statuses.count("failed"),
                "not_final": len(accepted) - len(final), "seconds": round(seconds, 1),
                "submit_seconds": round(submitted, 1), "train_seconds_v1": (v1.get("metrics") or {}).get("train_seconds"),
                "jobs": len(job_ids), "audit_ok": verify.get("ok"), "plans": plans}
    finally:
        for p in reversed(procs):
            stop(p)
        drop_db(db_name)
        if os.environ.get("BENCH_KEEP_LOGS"):  # a directory to keep the gateway's and the worker's logs in
            os.makedirs(os.environ["BENCH_KEEP_LOGS"], exist_ok=True)
            for name in ("gateway.log", "celery.log"):
                shutil.copy(os.path.join(tmp, name), os.environ["BENCH_KEEP_LOGS"])
        shutil.rmtree(tmp, ignore_errors=True)


def run_consolidation(dataset: str, requests: int, k: int, seed: int) -> dict:
    """Part 3: approximate sequence, then consolidation, against retraining (see the docstring)."""
    import dataclasses

    import numpy as np
    import torch

    from app.bootstrap import bootstrap_demo
    from app.catalogue import service as catalogue
    from app.catalogue.retained import all_retained_arrays
    from app.cli import migrate
    from app.db import session_scope
    from app.forget.schemas import ForgetCreate
    from app.forget.service import submit
    from app.jobs import consolidation
    from app.registry import service as registry
    from app.settings import Settings
    from models.data import load_dataset
    from models.train import accuracy, train_model
    from worker import driver

    tmp = tempfile.mkdtemp(prefix="lethe-consolidation-")
    s = Settings(database_url=f"sqlite:///{tmp}/lethe.db", registry_dir=os.path.join(tmp, "registry"),
                 data_dir=os.path.join(tmp, "data"), broker_url="", embedded_worker=False, demo_dataset=dataset,
                 demo_exact_dataset="", retrain_below_s=0, consolidate_after_instances=0,
                 consolidate_after_versions=0, sweeper_interval_s=0, webhook_poll_s=0)
    try:
        migrate(s)
        t0 = time.perf_counter()
        model = bootstrap_demo(s)
        boot_s = time.perf_counter() - t0
        ds = load_dataset(dataset)
        xt, yt = ds.x_test, ds.y_test

        def served():
            with session_scope(s.database_url) as db:
                v = registry.resolve_alias(db, model)
                net, _ = registry.load_version(s.registry_dir, v)
                return v.version, v.exact, net

        def forgotten_arrays(ids):
            with session_scope(s.database_url) as db:
                rows = catalogue.by_ids(db, model, ids)
                return catalogue.load_arrays([rows[i] for i in ids])

        with session_scope(s.database_url) as db:
            live = [r.instance_id for r in catalogue.retained(db, model, set())]
        rng = np.random.default_rng(seed)
        chosen = [str(i) for i in rng.choice(live, requests * k, replace=False)]
        # keep the forget rows before they are erased from the store (a job deletes raw data)
        fx, fy = forgotten_arrays(chosen)
        fx, fy = torch.from_numpy(fx), torch.from_numpy(fy)
        steps = []
        t_seq = time.perf_counter()
        for n in range(requests):
            ids = chosen[n * k:(n + 1) * k]
            with session_scope(s.database_url) as db:
                req, _, _ = submit(db, s, ForgetCreate(model=model, instance_ids=ids), idempotency_key=None,
                                   actor="bench")
                job_id = req.job_id
            t = time.perf_counter()
            outcome = driver.execute_job(job_id, settings=s, worker_name="bench")
            version, exact, net = served()
            steps.append({"request": n + 1, "outcome": outcome, "version": version, "exact": exact,
                          "seconds": round(time.perf_counter() - t, 2),
                          "ta": round(accuracy(net, xt, yt), 2),
                          "forgotten_acc": round(accuracy(net, fx[:(n + 1) * k], fy[:(n + 1) * k]), 2)})
            print(f"  request {n + 1}: {outcome} v{version} exact={exact} ta={steps[-1]['ta']}", flush=True)
        seq_s = time.perf_counter() - t_seq
        with session_scope(s.database_url) as db:
            debt = consolidation.Debt.of(registry.resolve_alias(db, model)).to_json()
            job, _ = consolidation.request(db, model, actor="bench", reason="bench: after the sequence")
            cons_id = job.id
        t = time.perf_counter()
        outcome = driver.execute_job(cons_id, settings=s, worker_name="bench")
        cons_s = time.perf_counter() - t
        version, exact, net = served()
        after = {"outcome": outcome, "version": version, "exact": exact, "seconds": round(cons_s, 2),
                 "ta": round(accuracy(net, xt, yt), 2), "forgotten_acc": round(accuracy(net, fx, fy), 2)}
        # retraining from scratch on the same retained rows, two other training seeds
        with session_scope(s.database_url) as db:
            m = registry.get_model(db, model)
            recipe, arch, shape, classes = registry.recipe_of(m), m.arch, tuple(m.input_shape), len(m.classes)
            rx, ry = all_retained_arrays(db, model, exclude=set())
        refs = []
        for train_seed in (recipe.seed + 1, recipe.seed + 2):
            t = time.perf_counter()
            ref = train_model(arch, torch.from_numpy(rx), torch.from_numpy(ry), input_shape=shape,
                              num_classes=classes, recipe=dataclasses.replace(recipe, seed=train_seed))
            refs.append({"train_seed": train_seed, "seconds": round(time.perf_counter() - t, 2),
                         "ta": round(accuracy(ref, xt, yt), 2), "forgotten_acc": round(accuracy(ref, fx, fy), 2)})
        ref_ta = sum(r["ta"] for r in refs) / len(refs)
        last = steps[-1]
        return {"dataset": dataset, "model": model, "requests": requests, "k": k, "forget_seed": seed,
                "retained_rows": int(len(ry)), "bootstrap_seconds": round(boot_s, 1),
                "sequence_seconds": round(seq_s, 1), "debt_before": debt, "steps": steps,
                "approximate": {"ta": last["ta"], "forgotten_acc": last["forgotten_acc"],
                                "gap_pt": round(last["ta"] - ref_ta, 2)},
                "consolidated": {**after, "gap_pt": round(after["ta"] - ref_ta, 2)},
                "retrain": refs, "retrain_ta_mean": round(ref_ta, 2),
                "within_1pt": abs(after["ta"] - ref_ta) <= 1.0}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recorded_train_seconds(service_row: dict | None) -> dict:
    """Each demo dataset's training time on record: the median ``retrain_seconds`` of
    ``bench/results/instance.json`` (the demo recipe, measured under the bench lock), else the
    service run's version 1 ``train_seconds``. {dataset: (seconds, source)}."""
    import statistics

    out = {}
    path = os.path.join(ROOT, "bench", "results", "instance.json")
    if os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)["rows"]
        for name in ("digits", "mnist5k", "adult"):
            times = [r["retrain_seconds"] for r in rows if r["dataset"] == name and r["method"] == "retrain"]
            if times:
                out[name] = (round(statistics.median(times), 2), f"median retrain_seconds of {len(times)} "
                                                                 "bench/results/instance.json rows")
    if service_row and service_row.get("train_seconds_v1") and service_row["dataset"] not in out:
        out[service_row["dataset"]] = (service_row["train_seconds_v1"], "this run's v1 train_seconds (bootstrap)")
    return out


def planner_table(recorded: dict) -> list[dict]:
    """The pure planner's choice per demo dataset and k, from the training time on record
    (``recorded``), else one timed here (default recipe, seed 0)."""
    from app.jobs import planner
    from app.settings import Settings
    from models.data import DEFAULT_ARCH, load_dataset
    from models.train import train_model
    from models.unlearn import get_family, resolve

    s = Settings()
    method = resolve(get_family("instance").default_method, has_retained_data=True).name
    rows = []
    for name in ("digits", "mnist5k", "adult"):
        train_s, source = recorded.get(name, (None, None))
        if train_s is None:
            ds = load_dataset(name)
            t0 = time.perf_counter()
            train_model(DEFAULT_ARCH[ds.name], ds.x_train, ds.y_train, input_shape=ds.input_shape,
                        num_classes=len(ds.classes), seed=0)
            train_s, source = round(time.perf_counter() - t0, 2), "train_model timed here"
        for k in KS:
            f = planner.Facts(sharded=False, method=method, k=k, has_retained=True, train_seconds=train_s,
                              max_approx_instances=s.max_approx_instances, retrain_below_s=s.retrain_below_s)
            p = planner.plan(f)
            rows.append({"dataset": name, "train_seconds": train_s, "train_seconds_from": source, "k": k,
                         "method": p.method, "exact": p.exact, "reason": p.reason})
    return rows


INSTANCE = os.path.join(ROOT, "bench", "results", "instance.json")


def _instance() -> dict:
    with open(INSTANCE) as f:
        return json.load(f)


def _instance_source() -> str:
    d = _instance()
    return (f"bench/results/instance.json, run of {d.get('started', '?')} on {d.get('machine', '?')}"
            + (", a partial run" if d.get("partial") else ""))


def choices_table(planner_rows: list[dict], instance: dict) -> list[dict]:
    """The planner's choice per (dataset, k) against always-retrain and always-approximate,
    from the instance benchmark's measured rows (``bench/results/instance.json``; nothing is
    rerun): ``retrain`` (training seed 0, the served recipe) and the service default
    (``default_method``: Lethe's method, objective retrain_like), one row per forget-set seed.
    The planner's figures are those of the way it chose (its verification fallback is not
    exercised there: the benchmark has no gate). None where a (dataset, k) has no row."""
    import statistics as st

    rows, default = instance["rows"], instance.get("default_method", "lethe_retrain_like")

    def measured(ds, k, method):
        rs = [r for r in rows if r["dataset"] == ds and str(r["scenario"]) == str(k) and r["method"] == method
              and (method != "retrain" or r.get("train_seed", 0) == 0)]
        if not rs:
            return None
        return {"seeds": sorted({r["seed"] for r in rs}), "ta": round(st.mean(r["ta"] for r in rs), 2),
                "seconds": round(st.mean(r["seconds"] for r in rs), 2),
                "d_uauc": round(st.mean(r["ulira_auc"] - r["retrain_ulira_auc"] for r in rs), 3),
                "avg_gap": round(st.mean(r["avg_gap"] for r in rs), 2),
                "converged": sum(bool(r["converged"]) for r in rs)}

    out = []
    for p in planner_rows:
        retrain, approx = measured(p["dataset"], p["k"], "retrain"), measured(p["dataset"], p["k"], default)
        out.append({"dataset": p["dataset"], "k": p["k"], "method": p["method"], "exact": p["exact"],
                    "reason": p["reason"], "approximate_method": default, "retrain": retrain,
                    "approximate": approx, "planner": retrain if p["exact"] else approx})
    return out


def _choice_cells(m: dict | None, gap: bool = True) -> str:
    if m is None:
        return "not measured"
    return (f"{m['ta']:.2f} / {m['d_uauc']:+.3f}" + (f" / {m['avg_gap']:.2f}" if gap else "")
            + f" / {m['seconds']:.2f} s")


DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- completion:begin (python -m bench.completion writes this block) -->", "<!-- completion:end -->"


def markdown(doc: dict) -> str:
    """The docs block, from the JSON only."""
    lines = [BEGIN, "", f"{doc['machine']}. Service runs (part 1): seconds = first POST to the last request "
             "final; the client retries a 429 (the per-caller submit rate limit: one admin key here) after its "
             "Retry-After. Jobs in creation order: method, k, attempts (each job's `plan` is in "
             "`bench/results/completion.json`)."]
    for r in doc["rows"]:
        lines.append(f"- {r['dataset']} N={r['requests']}: run of {r.get('date', doc.get('date'))} "
                     f"(commit {r.get('commit', doc.get('commit'))})"
                     + (f"; {r['note']}" if r.get("note") else "") + ".")
    lines += ["", "| dataset | requests | settings | completed | failed | not final | seconds (submitting) | "
              "429 retried | jobs (method, k, attempts) | audit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        jobs = _jobs_cell(r["plans"])
        settings = ", ".join(f"{k}={v}" for k, v in (r.get("settings") or {}).items()) or "defaults"
        lines.append(f"| {r['dataset']} | {r['requests']} | {settings} | {r['completed']} | {r['failed']} | "
                     f"{r['not_final']} | {r['seconds']} ({r.get('submit_seconds', '?')}) | "
                     f"{r.get('rate_limited_429', '?')} | {jobs} | {'ok' if r['audit_ok'] else 'FAILED'} |")
    if doc.get("consolidation"):
        lines += ["", "The continual sequence with consolidation (`--consolidation`, in process): requests "
                  "served approximately one after another, then one consolidation job; test accuracy (TA) and "
                  "accuracy on every instance forgotten so far (D_f acc.) of the served model, against retraining "
                  "from scratch on the same retained rows (mean of two other training seeds). Runs: "
                  + "; ".join(f"{r['dataset']} {r.get('date', '?')} (commit {r.get('commit', '?')}, demo "
                              f"bootstrap {r['bootstrap_seconds']} s)" for r in doc["consolidation"]) + ".", "",
                  "| dataset | requests x k (seed) | served after the sequence: TA (vs retrain), D_f acc. | "
                  "after consolidation: TA (vs retrain), D_f acc., exact | retrain TA, D_f acc. | "
                  "sequence s | consolidation s | within 1 pt |", "|---|---|---|---|---|---|---|---|"]
        for r in doc["consolidation"]:
            a, c = r["approximate"], r["consolidated"]
            ref_f = sum(x["forgotten_acc"] for x in r["retrain"]) / len(r["retrain"])
            lines.append(f"| {r['dataset']} | {r['requests']} x {r['k']} ({r['forget_seed']}) | "
                         f"{a['ta']:.2f} ({a['gap_pt']:+.2f} pt), {a['forgotten_acc']:.1f} | "
                         f"{c['ta']:.2f} ({c['gap_pt']:+.2f} pt), {c['forgotten_acc']:.1f}, "
                         f"{'yes' if c['exact'] else 'no'} | {r['retrain_ta_mean']:.2f}, {ref_f:.1f} | "
                         f"{r['sequence_seconds']} | {c['seconds']} | {'yes' if r['within_1pt'] else 'NO'} |")
    if doc.get("planner"):
        lines += ["", "The pure planner (`app.jobs.planner.plan`, default settings, a model's first job: no "
                  "approximate history) for each demo model's training time on record:", "",
                  "| dataset | training s (source) | k | method | reason |", "|---|---|---|---|---|"]
        for p in doc["planner"]:
            lines.append(f"| {p['dataset']} | {p['train_seconds']} ({p['train_seconds_from']}) | {p['k']} | "
                         f"{p['method']} | {p['reason']} |")
    if doc.get("choices"):
        lines += ["", "The planner's choice against always-retrain and always-approximate (the service default, "
                  f"`{doc['choices'][0]['approximate_method']}` in `bench/results/instance.json`), from the instance "
                  "benchmark's measured rows (nothing rerun for this table; " + doc.get("choices_source", "") + "). "
                  "Per cell: test accuracy (TA, evaluation half) / uAUC − retrained uAUC (per-example audit; 0 = "
                  "as retrained; retrain: against its other training seed, i.e. retraining's own spread; at k = 1 a "
                  "single instance's uAUC is close to 0 or 1, so noisy) / Avg.Gap to the retrained models "
                  "(retrain: its own spread) / seconds; mean over the forget-set seeds listed. \"not measured\": the instance "
                  "benchmark has no row for that (dataset, k) (k = 1,000 was never run; mnist5k only k = 1 and 8). "
                  "The planner's cell is the way it chose; the service's verification gate, with its "
                  "exact fallback, is not exercised by these rows.", "",
                  "| dataset | k | planner | seeds | always-retrain | always-approximate | planner's choice |",
                  "|---|---|---|---|---|---|---|"]
        for c in doc["choices"]:
            seeds = (c["retrain"] or c["approximate"] or {}).get("seeds")
            lines.append(f"| {c['dataset']} | {c['k']} | {c['method']} | "
                         f"{','.join(map(str, seeds)) if seeds else '–'} | {_choice_cells(c['retrain'])} | "
                         f"{_choice_cells(c['approximate'])} | {_choice_cells(c['planner'])} |")
    return "\n".join(lines + ["", END])


def _jobs_cell(plans: list[dict]) -> str:
    """Each job (method, k, attempts) when there are few; else a count per method."""
    def kind(p):
        return "consolidation" if p.get("objective") == "consolidate" else p["method"]
    if len(plans) <= 8:
        return "; ".join(f"{kind(p)} k={p['k']} x{p['attempts']}"
                         + (f" (fallback from {p['fallback_from']})" if p.get("fallback_from") else "")
                         for p in plans)
    parts = []
    for m in dict.fromkeys(kind(p) for p in plans):
        ks = [p["k"] or 0 for p in plans if kind(p) == m]
        parts.append(f"{len(ks)} {m} (k {min(ks)}" + (f"-{max(ks)})" if max(ks) > min(ks) else ")"))
    fb = sum(1 for p in plans if p.get("fallback_from"))
    return (f"{len(plans)} jobs: " + ", ".join(parts) + f"; attempts <= {max(p['attempts'] for p in plans)}"
            + (f"; {fb} exact fallbacks" if fb else "; no fallback"))


def render_docs(doc: dict) -> None:
    with open(DOCS) as f:
        text = f.read()
    block = markdown(doc)
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip("\n") + "\n\n## Every request completes (`python -m bench.completion`, issue 13)\n\n"
                + block + "\n")
    with open(DOCS, "w") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for every request to be final")
    ap.add_argument("--skip-planner", action="store_true")
    ap.add_argument("--planner-only", action="store_true", help="only the planner table; keep the stored service rows")
    ap.add_argument("--note", default="", help="recorded with the results (e.g. why N is smaller than asked)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting changed from its default for the service run (recorded with the row)")
    ap.add_argument("--choices-only", action="store_true",
                    help="only the planner's choice against always-retrain / always-approximate, from the stored "
                         "planner table and bench/results/instance.json; keep everything else")
    ap.add_argument("--consolidation", action="store_true", help="also part 3: the sequence with consolidation")
    ap.add_argument("--consolidation-only", action="store_true",
                    help="only part 3 (its row replaces the stored one of its dataset and seed); keep the other "
                         "stored rows")
    ap.add_argument("--cons-dataset", default="digits")
    ap.add_argument("--cons-requests", type=int, default=16)
    ap.add_argument("--cons-k", type=int, default=8)
    ap.add_argument("--cons-seed", type=int, default=0)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = {"commit": commit, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{os.cpu_count()} CPU cores, shared with other sessions while measured (timings are noisy)",
           "note": args.note, "rows": []}
    old = {}
    if os.path.exists(OUT):
        with open(OUT) as f:
            old = json.load(f)
    doc["consolidation"] = old.get("consolidation", [])
    if args.choices_only:
        doc = {**old, "choices": choices_table(old["planner"], _instance()), "choices_source": _instance_source()}
        with open(OUT, "w") as f:
            json.dump(doc, f, indent=1)
        render_docs(doc)
        print(f"wrote {OUT} and the block in {DOCS}")
        return
    if args.consolidation or args.consolidation_only:
        row = run_consolidation(args.cons_dataset, args.cons_requests, args.cons_k, args.cons_seed)
        row.update(commit=commit, date=doc["date"])
        print(json.dumps({k: v for k, v in row.items() if k != "steps"}), flush=True)
        doc["consolidation"] = [r for r in doc["consolidation"]
                                if (r["dataset"], r["forget_seed"]) != (row["dataset"], row["forget_seed"])] + [row]
    if args.consolidation_only:
        doc.update({k: old[k] for k in ("commit", "date", "note", "rows", "planner", "machine") if k in old})
        with open(OUT, "w") as f:
            json.dump(doc, f, indent=1)
        render_docs(doc)
        print(f"wrote {OUT} and the block in {DOCS}")
        return
    if args.planner_only and old:
        doc.update({k: old[k] for k in ("commit", "date", "note", "rows") if k in old})
    else:
        overrides = dict(kv.split("=", 1) for kv in args.set)
        row = run_service(args.n, args.dataset, args.threads, args.timeout, overrides)
        row.update(commit=commit, date=doc["date"], note=args.note)
        print(json.dumps({k: v for k, v in row.items() if k != "plans"}), flush=True)
        # a run replaces the stored one of its dataset, size and settings; undated rows are superseded
        key = (row["dataset"], row["requests"], row["settings"])
        doc["rows"] = [r for r in old.get("rows", []) if r.get("date")
                       and (r["dataset"], r["requests"], r.get("settings") or {}) != key] + [row]
    # --skip-planner keeps the stored planner table (it is cheap to redo with --planner-only)
    doc["planner"] = (old.get("planner", []) if args.skip_planner
                      else planner_table(recorded_train_seconds((doc["rows"] or [None])[0])))
    if doc["planner"] and os.path.exists(INSTANCE):
        doc["choices"], doc["choices_source"] = choices_table(doc["planner"], _instance()), _instance_source()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
    render_docs(doc)
    for r in doc["planner"]:
        print(f"{r['dataset']:8} train {r['train_seconds']:6.1f} s  k={r['k']:5}  {r['method']:12} {r['reason']}")
    print(f"wrote {OUT} and the block in {DOCS}")


if __name__ == "__main__":
    main()
