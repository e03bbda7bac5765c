"""First-start demo, through the path a user takes: the demo dataset (LETHE_DEMO_DATASET) is
registered with the service behind ``POST /v1/datasets`` and its default model trained with
the service behind ``POST /v1/models/{name}/train`` (version 1 under ``production``, every
training row catalogued with its subject as an HMAC reference)."""
from __future__ import annotations

import logging
import time

from .catalogue import service as catalogue
from .datasets import service as datasets
from .datasets.demo import ensure_demo_dataset
from .db import session_scope
from .registry import service as registry
from .registry import training
from .settings import Settings

log = logging.getLogger("lethe.bootstrap")


def bootstrap_demo(settings: Settings) -> str | None:
    """The first start's demo, through the path a user takes: the demo dataset is registered
    with the service behind ``POST /v1/datasets`` and its model trained with the service
    behind ``POST /v1/models/{name}/train`` (``registry.training.start``, then the run the
    worker would run, here in this thread). Returns the model name, or None when a model is
    already registered."""
    with session_scope(settings.database_url) as db:
        if registry.list_models(db):
            return None
    from models.data import DEFAULT_ARCH
    from models.train import default_recipe
    from worker.training import run_training

    t0 = time.perf_counter()
    ensure_demo_dataset(settings, settings.demo_dataset)
    arch = DEFAULT_ARCH[settings.demo_dataset]
    name = f"{settings.demo_dataset}-{arch}"
    recipe = default_recipe(arch, seed=settings.demo_seed, **({"epochs": settings.demo_epochs}
                                                              if settings.demo_epochs else {}))
    with session_scope(settings.database_url) as db:
        run = training.start(db, settings, name, training.TrainBody(dataset=settings.demo_dataset, arch=arch,
                                                                    recipe=recipe.to_json()), actor="bootstrap")
        run_id = run.id
    log.info("bootstrap: training %s on %s (run %s)", arch, settings.demo_dataset, run_id)
    if run_training(run_id, settings=settings, worker_name="bootstrap") != training.COMPLETED:
        with session_scope(settings.database_url) as db:
            raise RuntimeError(f"bootstrap: training {name} failed: {training.get(db, run_id).error}")
    log.info("bootstrap: %s v1 ready in %.1f s", name, time.perf_counter() - t0)
    return name


def bootstrap_exact_demo(settings: Settings, kind: str = "sisa") -> str | None:
    """The exact demo model beside the instance-wise one: SISA on LETHE_DEMO_EXACT_DATASET
    (default ``adult``, its first LETHE_DEMO_EXACT_ROWS training rows so the first start stays
    fast), registered as a bundle (manifest + one safetensors per shard, each with its
    sha256) with family ``sisa``; the catalogue records every instance's shard and slice.
    ``kind="arcane"`` registers an ARCANE model the same way (one sub-model per class).
    Returns the model name, or None when disabled or already registered."""
    if not settings.demo_exact_dataset:
        return None
    from models import trainers
    from models.data import DEFAULT_ARCH, load_dataset
    from models.train import DEFAULT_EPOCHS, accuracy
    from models.unlearn import method_info, oneclass
    from models.unlearn.arcane import train_arcane
    from models.unlearn.shards import ExactConfig, save_member, write_manifest
    from models.unlearn.sisa import train_sisa

    ds = load_dataset(settings.demo_exact_dataset)
    refusal = method_info(kind).refusal_for(ds.input_shape)  # measured: another method serves such data better
    if refusal:
        raise ValueError(f"bootstrap: {kind} is not offered for {ds.name}'s kind of data (LETHE_DEMO_EXACT_KINDS, "
                         f"LETHE_DEMO_EXACT_DATASET): {refusal}")
    arch = DEFAULT_ARCH[ds.name] if kind == "sisa" else "ae1c"
    name = f"{ds.name}-{kind}"
    with session_scope(settings.database_url) as db:
        if registry.get_model(db, name) is not None:
            return None
    t0 = time.perf_counter()
    ensure_demo_dataset(settings, ds.name)
    n = settings.demo_exact_rows or len(ds.y_train)
    ids, x, y = ds.ids_train[:n], ds.x_train[:n], ds.y_train[:n]
    # SISA shards train with the configured trainer (a plug-in too: models/trainers.py); ARCANE's
    # one-class members train with Lethe's own loss only
    trainer, params = trainers.resolve(settings.demo_exact_trainer, settings.demo_exact_trainer_params) \
        if kind == "sisa" and (settings.demo_exact_trainer != "lethe" or settings.demo_exact_trainer_params) \
        else ("lethe", None)
    recipe = {"epochs": DEFAULT_EPOCHS.get(arch, 6)}
    if kind == "arcane":  # the one-class learner's own epochs and learning rate (models/unlearn/oneclass.py)
        recipe = {k: v for k, v in oneclass.defaults(ds.input_shape).items() if k in ("epochs", "lr")}
    recipe["epochs"] = settings.demo_exact_epochs or recipe["epochs"]
    config = ExactConfig(kind=kind, arch=arch, dataset=ds.name, input_shape=ds.input_shape, classes=ds.classes,
                         shards=settings.demo_exact_shards if kind == "sisa" else len(ds.classes),
                         slices=settings.demo_exact_slices, seed=settings.demo_seed, trainer=trainer,
                         trainer_params=params, **recipe)
    log.info("bootstrap: training %s (S=%d, R=%d) %s on %d %s instances", kind, config.shards, config.slices, arch,
             n, ds.name)
    train = train_sisa if kind == "sisa" else train_arcane
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small shard models: extra intra-op threads only contend (17x slower on 2 busy cores)
    try:
        model = train(config, ids, x, y, store=registry.slices(registry.weights(settings), name))
    finally:
        torch.set_num_threads(threads)
    ta = accuracy(model, ds.x_test, ds.y_test)
    members = []
    for m, net in enumerate(model.members):
        tmp = registry.weights_tmp_path(registry.weights(settings), name)
        sha = save_member(net, tmp, config, m)
        members.append({"file": registry.publish_member(registry.weights(settings), name, tmp, sha), "sha256": sha})
    tmp = registry.manifest_tmp_path(registry.weights(settings), name)
    sha = write_manifest(tmp, config, model.plan, members)
    rel = registry.publish_bundle(registry.weights(settings), name, tmp, sha)
    where = model.plan.locate()
    rows = catalogue.rows_for_model(datasets.store_dir(settings, ds.name), name, ds.name, list(ids))
    for r in rows:
        r["shard"], r["slice"] = where[r["instance_id"]]
    metrics = {"ta": float(ta), "train_seconds": round(time.perf_counter() - t0, 2), "shards": config.shards,
               "slices": config.slices, "rows": n}
    caveat = method_info(kind).caveat_for(ds.input_shape)  # a measured limit of the method on such data
    if caveat:
        log.warning("bootstrap: %s: %s", name, caveat)
        metrics["caveat"] = caveat
    with session_scope(settings.database_url) as db:
        registry.register_model(db, name=name, dataset=ds.name, arch=arch, input_shape=ds.input_shape,
                                classes=ds.classes, family=kind,
                                recipe={"trainer": trainer, "trainer_params": params, "seed": settings.demo_seed}
                                if trainer != "lethe" else None)
        _first_version(db, name, sha, rel, metrics, rows, ds.name,
                       family=kind, members=[m["sha256"] for m in members])
    log.info("bootstrap: %s v1 (%s S=%d R=%d, test accuracy %.2f %%) ready in %.1f s", name, kind, config.shards,
             config.slices, ta, time.perf_counter() - t0)
    return name


def _first_version(db, name: str, sha: str, rel: str, metrics: dict, rows: list[dict], dataset: str,
                   **version_extra) -> None:
    """Version 1, the production alias on it and the catalogue, each audited (one transaction):
    the publishing step of a training run (``registry.training.publish_first_version``)."""
    training.publish_first_version(db, name, sha, rel, metrics, rows, dataset, actor="bootstrap", **version_extra)
