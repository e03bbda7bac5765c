"""First-start demo: train the default model of LETHE_DEMO_DATASET, register it as
version 1 under the alias ``production``, and catalogue every training instance (raw data
in the per-instance store, subject ids as HMAC references)."""
from __future__ import annotations

import logging
import time

from .audit import service as audit
from .catalogue import service as catalogue
from .catalogue import store
from .catalogue.models import TrainingInstance
from .db import session_scope
from .registry import service as registry
from .registry.models import PRODUCTION
from .settings import Settings

log = logging.getLogger("lethe.bootstrap")

# Named demo subjects and how many training instances each owns (the first instances of
# the shuffled training split, in this order); every later group of 4 instances belongs
# to "user-0000", "user-0001", ...
DEMO_SUBJECTS: list[tuple[str, int]] = [("alice", 3), ("bob", 4), ("carol", 5), ("dave", 2),
                                        ("erin", 6), ("frank", 3), ("grace", 4), ("heidi", 8)]
GROUP = 4


def demo_subject(index: int) -> str:
    """Deterministic owner of the index-th training instance."""
    for name, n in DEMO_SUBJECTS:
        if index < n:
            return name
        index -= n
    return f"user-{index // GROUP:04d}"


def bootstrap_demo(settings: Settings) -> str | None:
    """Returns the registered model name, or None when a model is already registered."""
    with session_scope(settings.database_url) as db:
        if registry.list_models(db):
            return None
    from models.checkpoint import save_checkpoint
    from models.data import DEFAULT_ARCH, load_dataset
    from models.train import accuracy, train_model

    t0 = time.perf_counter()
    ds = load_dataset(settings.demo_dataset)
    arch = DEFAULT_ARCH[ds.name]
    name = f"{ds.name}-{arch}"
    log.info("bootstrap: training %s on %d %s instances", arch, len(ds.y_train), ds.name)
    model = train_model(arch, ds.x_train, ds.y_train, input_shape=ds.input_shape, num_classes=len(ds.classes),
                        seed=settings.demo_seed, epochs=settings.demo_epochs)
    ta = accuracy(model, ds.x_test, ds.y_test)
    tmp = registry.weights_tmp_path(settings.registry_dir, name)
    sha = save_checkpoint(model.cpu(), tmp, arch=arch, dataset=ds.name, input_shape=ds.input_shape,
                          classes=ds.classes, extra={"seed": settings.demo_seed})
    rel = registry.publish_weights(settings.registry_dir, name, tmp, sha)
    x, y = ds.x_train.numpy(), ds.y_train.numpy()
    rows = []
    for i, iid in enumerate(ds.ids_train):
        path = store.path_for(settings.data_dir, name, iid)
        store.write(path, x[i])
        rows.append(dict(model_name=name, instance_id=iid, dataset=ds.name,
                         subject_ref=catalogue.subject_ref(settings.subject_secret, demo_subject(i)),
                         label=int(y[i]), content_hash=store.content_hash(x[i]), storage_uri=path))
    with session_scope(settings.database_url) as db:
        registry.register_model(db, name=name, dataset=ds.name, arch=arch, input_shape=ds.input_shape,
                                classes=ds.classes)
        v = registry.add_version(db, model_name=name, sha256=sha, storage_path=rel, parent_version=None,
                                 job_id=None, metrics={"ta": float(ta), "train_seconds": round(time.perf_counter() - t0, 2)})
        audit.append(db, actor="bootstrap", action="model.version_created",
                     payload={"model": name, "version": v.version, "sha256": sha, "parent_version": None,
                              "metrics": v.metrics})
        registry.move_alias(db, model_name=name, alias=PRODUCTION, to_version=v.version, actor="bootstrap")
        audit.append(db, actor="bootstrap", action="alias.moved",
                     payload={"model": name, "alias": PRODUCTION, "from_version": None, "to_version": v.version})
        db.bulk_insert_mappings(TrainingInstance, rows)
        audit.append(db, actor="bootstrap", action="catalogue.loaded",
                     payload={"model": name, "dataset": ds.name, "instances": len(rows)})
    log.info("bootstrap: %s v1 (test accuracy %.2f %%) ready in %.1f s", name, ta, time.perf_counter() - t0)
    return name
