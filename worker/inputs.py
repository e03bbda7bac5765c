"""What an execution path reads for a job, checked: the base version's weights file (its
sha256 against the registry's), the dataset's held-out rows, and catalogue rows by id
through the dataset store (content hash checked). Both paths use these; neither writes."""
from __future__ import annotations

from app.catalogue import service as catalogue
from app.datasets import service as datasets
from app.db import session_scope
from app.registry import service as registry
from app.settings import Settings

from .job import JobFailed, JobSpec


def base_file(s: Settings, spec: JobSpec) -> str:
    """The base version's weights (a checkpoint, or a sharded model's manifest and its
    members), fetched from the object store when this node has no copy, checked."""
    from models.checkpoint import file_sha256

    try:
        path = registry.weights(s).fetch_version(spec.base_path, spec.base_sha)
    except ValueError as e:  # the object's bytes are not the version's
        raise JobFailed(f"weights of v{spec.base_version}: {e}")
    if file_sha256(path) != spec.base_sha:
        raise JobFailed(f"weights of v{spec.base_version} fail their sha256 check")
    return path


def holdout(s: Settings, spec: JobSpec):
    """The dataset's held-out rows (at most job_holdout_rows) as tensors."""
    import torch

    return tuple(torch.from_numpy(a) for a in datasets.holdout_arrays(s, spec.dataset, s.job_holdout_rows))


def data_fn(s: Settings, model_name: str):
    """id -> (x, y) read through the dataset store (only the row groups holding them;
    content hash checked). What was read is kept for the job: a member's retrain reads its
    shard's rows, so memory follows the shard, not the dataset."""
    import numpy as np
    import torch

    cache: dict[str, tuple] = {}

    def fetch(ids: list[str]):
        missing = [i for i in ids if i not in cache]
        if missing:
            with session_scope(s.database_url) as db:
                rows = catalogue.by_ids(db, model_name, missing)
            bad = [i for i in missing if i not in rows or rows[i].erased_at is not None]
            if bad:
                raise JobFailed(f"instance {bad[0]} is not a live catalogue entry of {model_name}")
            try:
                x, y = catalogue.load_arrays([rows[i] for i in missing], check_hash=True)
            except RuntimeError as e:
                raise JobFailed(str(e))
            for i, a, label in zip(missing, x, y):
                cache[i] = (a, int(label))
        x = torch.from_numpy(np.stack([cache[i][0] for i in ids]).astype(np.float32))
        y = torch.tensor([cache[i][1] for i in ids], dtype=torch.long)
        return x, y

    return fetch
