"""The MLflow Model Registry, both ways (``LETHE_MLFLOW_TRACKING_URI``; docs/serving.md).

**Out.** Every version Lethe publishes becomes a model version of the MLflow registered
model of the same name, built with MLflow's *models from code*: the model's code is
``app/mirror/loader.py`` (no pickled object), its artifact the version's safetensors file,
Lethe's ML core (``models/``) shipped as ``code_paths``; so
``mlflow.pyfunc.load_model("models:/NAME@production")`` rebuilds the network from the
file's own metadata. Each MLflow version is tagged ``lethe.version``, ``lethe.sha256``,
``lethe.parent_version``, ``lethe.job_id``, ``lethe.exact``, ``lethe.certificates`` (the
requests whose certificates name it) and ``lethe.status``. Lethe's aliases are set on the
matching MLflow versions. A purged version's artifacts are deleted from MLflow's artifact
store (its weights hold erased data), the version is tagged ``lethe.status=PURGED`` and
loses its aliases.

The mirror is a comparison, not a log replay: ``sync`` reads Lethe's registry and MLflow's
and makes MLflow agree, so it is idempotent and catches up whatever it missed while MLflow
was down (``lethe mlflow sync``, and the gateway's ``MirrorPump``: a round whenever a
registry event was recorded since the last one, and a full one every
``LETHE_MLFLOW_FULL_SYNC_S``).

**In.** ``import_version`` downloads a model version's artifacts from MLflow
(``models:/NAME/3`` or ``models:/NAME@alias``), takes its one safetensors file (pickles are
refused, as on upload) and registers it exactly as ``POST /v1/models`` registers an upload.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

from sqlalchemy import func, select

from ..db import read_scope
from ..periodic import PeriodicThread

log = logging.getLogger("lethe.mirror")
EXPERIMENT = "lethe-registry"
LOADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loader.py")
ML_CORE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "models")
PURGED_TAG = "PURGED"


def _client(uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    # mlflow-artifacts:/ URIs (the server's proxied artifact store) resolve against the
    # process's tracking URI: the mirror is the process's only MLflow user
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def snapshot(settings, only: str | None = None) -> list[dict]:
    """Lethe's registry as the mirror needs it, read in one short session."""
    from ..forget import models as fm
    from ..forget.models import ForgetRequest
    from ..registry import service as registry
    from ..registry.governance import superseded_by

    out = []
    with read_scope(settings.database_url) as db:
        for m in registry.list_models(db):
            if only is not None and m.name != only:
                continue
            rows = registry.versions(db, m.name)
            certs: dict[int, list[str]] = {}
            for rid, after, exact in db.execute(select(ForgetRequest.id, ForgetRequest.version_after,
                                                       ForgetRequest.exact_version).where(
                    ForgetRequest.model_name == m.name, ForgetRequest.status == fm.COMPLETED)).all():
                for v in {after, exact} - {None}:
                    certs.setdefault(v, []).append(rid)
            out.append({"name": m.name, "family": m.family, "aliases": registry.aliases(db, m.name), "versions": [
                {"version": v.version, "sha256": v.sha256, "status": v.status, "parent_version": v.parent_version,
                 "job_id": v.job_id, "exact": v.exact, "superseded_by": superseded_by(db, m.name, v.version, rows),
                 "path": registry.absolute_path(registry.weights(settings), v.storage_path),
                 "storage_path": v.storage_path,
                 "bundle": registry.is_bundle(v.storage_path), "certificates": sorted(certs.get(v.version, []))}
                for v in rows]})
    return out


class Mirror:
    def __init__(self, settings):
        if not settings.mlflow_tracking_uri:
            raise ValueError("LETHE_MLFLOW_TRACKING_URI is not set: no MLflow to mirror to")
        self.settings = settings
        self.uri = settings.mlflow_tracking_uri
        self.client = _client(self.uri)
        self._experiment: str | None = None

    # --- out ---------------------------------------------------------------------------------

    def sync(self, only: str | None = None) -> dict:
        """Make MLflow agree with Lethe (every model, or ``only``). Returns what it changed."""
        done = {"created": [], "aliases": [], "purged": []}
        for m in snapshot(self.settings, only):
            if m["family"] != "instance":
                continue  # sharded models' versions are bundles of many files: not one MLflow model
            self._sync_model(m, done)
        return done

    def _sync_model(self, m: dict, done: dict) -> None:
        from mlflow.exceptions import MlflowException

        name = m["name"]
        try:
            rm = self.client.get_registered_model(name)
        except MlflowException:
            rm = self.client.create_registered_model(name, tags={"lethe.model": name},
                                                     description=f"Mirrored from the Lethe registry: {name}")
        # the MLflow version mirroring each Lethe version: same number and same sha256 (a
        # registered model of that name may also hold versions of another Lethe install), one
        # not marked purged if there is one (a purged mirror of a live version is replaced)
        sha_of = {v["version"]: v["sha256"] for v in m["versions"]}
        mirrored = {}
        for mv in sorted(self.client.search_model_versions(f"name='{name}'"), key=lambda x: int(x.version)):
            lv = int(mv.tags.get("lethe.version") or 0)
            if mv.tags.get("lethe.sha256") != sha_of.get(lv):
                continue
            if lv not in mirrored or mirrored[lv].tags.get("lethe.status") == PURGED_TAG:
                mirrored[lv] = mv
        for v in m["versions"]:
            mv = mirrored.get(v["version"])
            live = mv is not None and mv.tags.get("lethe.status") != PURGED_TAG
            if v["status"] == "READY" and not live and not v["bundle"] and self._local(v):
                mirrored[v["version"]] = self._create(name, v)
                done["created"].append(f"{name}:{v['version']}")
            elif v["status"] == PURGED_TAG and mv is not None and mv.tags.get("lethe.status") != PURGED_TAG:
                self._purge(name, mv, v)
                done["purged"].append(f"{name}:{v['version']}")
        current = dict(rm.aliases or {})
        for alias, version in m["aliases"].items():
            mv = mirrored.get(version)
            if mv is not None and str(current.get(alias)) != str(mv.version):
                self.client.set_registered_model_alias(name, alias, mv.version)
                done["aliases"].append(f"{name}@{alias}={version}")
        purged = {str(mv.version) for lv, mv in mirrored.items()
                  if any(v["version"] == lv and v["status"] == PURGED_TAG for v in m["versions"])}
        for alias, mlv in current.items():
            if str(mlv) in purged and alias not in m["aliases"]:
                self.client.delete_registered_model_alias(name, alias)

    def _local(self, v: dict) -> bool:
        """The version's weights are on this node (fetched from the object store if need be)."""
        from ..registry import service as registry

        try:
            v["path"] = registry.weights(self.settings).fetch(v["storage_path"], v["sha256"])
            return True
        except (FileNotFoundError, ValueError):
            return False

    def _experiment_id(self) -> str:
        if self._experiment is None:
            e = self.client.get_experiment_by_name(EXPERIMENT)
            self._experiment = e.experiment_id if e is not None else self.client.create_experiment(EXPERIMENT)
        return self._experiment

    def _tags(self, v: dict) -> dict[str, str]:
        return {"lethe.version": str(v["version"]), "lethe.sha256": v["sha256"],
                "lethe.parent_version": str(v["parent_version"] or ""), "lethe.job_id": v["job_id"] or "",
                "lethe.exact": str(bool(v["exact"])).lower(),
                "lethe.superseded_by": str(v["superseded_by"] or ""),
                "lethe.certificates": ",".join(v["certificates"][:50]), "lethe.status": v["status"]}

    def _create(self, name: str, v: dict):
        import mlflow.pyfunc

        tags = self._tags(v)
        with tempfile.TemporaryDirectory(prefix="lethe-mlflow-") as d:
            local = os.path.join(d, "model")
            mlflow.pyfunc.save_model(local, python_model=LOADER, artifacts={"weights": v["path"]},
                                     code_paths=[ML_CORE], metadata={k.replace("lethe.", ""): x for k, x in tags.items()},
                                     pip_requirements=["torch==2.13.0", "safetensors==0.8.0", "numpy"])
            run = self.client.create_run(self._experiment_id(), run_name=f"{name} v{v['version']}", tags=tags)
            self.client.log_artifacts(run.info.run_id, local, "model")
            self.client.set_terminated(run.info.run_id)
        return self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags,
            description=f"Lethe {name} v{v['version']} (sha256 {v['sha256'][:12]}...)")

    def _purge(self, name: str, mv, v: dict) -> None:
        """The version's artifacts leave MLflow's artifact store; the version stays, marked."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(mv.source).delete_artifacts()
        self.client.set_model_version_tag(name, mv.version, "lethe.status", PURGED_TAG)
        self.client.set_model_version_tag(name, mv.version, "lethe.superseded_by", str(v["superseded_by"] or ""))
        self.client.update_model_version(name, mv.version, description=(
            f"Lethe {name} v{v['version']}: PURGED, its weights held erased data and were deleted"))
        for alias in list(mv.aliases or []):
            self.client.delete_registered_model_alias(name, alias)

    # --- in ----------------------------------------------------------------------------------

    def fetch_weights(self, uri: str) -> tuple[bytes, str]:
        """The one safetensors file of an MLflow model (``models:/NAME/3`` or ``@alias``) and
        its file name; ValueError says what is wrong."""
        import mlflow.artifacts

        if not uri.startswith("models:/"):
            raise ValueError(f"source must be models:/NAME/VERSION or models:/NAME@alias, got {uri!r}")
        with tempfile.TemporaryDirectory(prefix="lethe-mlflow-in-") as d:
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=d, tracking_uri=self.uri)
            except Exception as e:  # noqa: BLE001 - MLflow answers many ways; the message says which
                raise ValueError(f"cannot download {uri} from MLflow: {str(e)[:300]}") from e
            found = [os.path.join(r, f) for r, _, fs in os.walk(local) for f in fs if f.endswith(".safetensors")]
            pickles = [f for r, _, fs in os.walk(local) for f in fs
                       if f.endswith((".pkl", ".pt", ".pth", ".bin", ".ckpt"))]
            if len(found) != 1:
                raise ValueError(f"{uri} holds {len(found)} safetensors files (pickled files: {sorted(pickles)[:5]}); "
                                 "Lethe imports exactly one safetensors state dict and never loads pickles")
            with open(found[0], "rb") as f:
                return f.read(), os.path.basename(found[0])


class MirrorPump(PeriodicThread):
    """The gateway's automatic mirror: a round when a registry event was recorded since the
    last round (read: the count and newest time of ``registry_events``), and a full one at
    least every ``mlflow_full_sync_s``. A round that fails (MLflow down) is retried."""

    def __init__(self, settings):
        super().__init__("lethe-mlflow", settings.mlflow_sync_s if settings.mlflow_tracking_uri else 0, self._round)
        self.settings = settings
        self.mirror: Mirror | None = None
        self._seen = None
        self._last_full = 0.0

    def _round(self) -> None:
        from ..events.models import RegistryEvent

        with read_scope(self.settings.database_url) as db:
            mark = tuple(db.execute(select(func.count(), func.max(RegistryEvent.created_at))
                                    .select_from(RegistryEvent)).one())
        now = time.monotonic()
        if mark == self._seen and now - self._last_full < self.settings.mlflow_full_sync_s:
            return
        if self.mirror is None:
            self.mirror = Mirror(self.settings)
        done = self.mirror.sync()
        self._seen, self._last_full = mark, now
        if any(done.values()):
            log.info("mlflow mirror: %s", done)
