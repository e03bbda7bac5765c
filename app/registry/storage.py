"""Where the registry's weight files live: content-addressed files (each named by its sha256)
under ``LETHE_REGISTRY_DIR`` by default, or objects on an S3-compatible store
(``LETHE_REGISTRY_URL=s3://bucket/prefix``) that every node reads, with the same names.

Names (relative to the registry, what ``model_versions.storage_path`` holds)::

    <model>/<sha256>.safetensors            a single checkpoint
    <model>/<sha256>.bundle.json            a sharded model's manifest (names every member's sha256)
    <model>/members/<sha256>.safetensors    a member of a bundle (shared by versions it did not change)
    <model>/slices/<key>.safetensors        a SISA/ARCANE slice checkpoint (key: hash of the ids trained)
    probes/<model>/<id>.sealed              a job's forget rows, encrypted (app/registry/probes.py)

With an object store, ``LETHE_REGISTRY_DIR`` is this process's **cache** of those objects:
a file is written there, uploaded, and kept; a file another node wrote is downloaded on
first use, its bytes hashed while they arrive and refused unless they match the sha256 the
registry holds (the file is loaded with safetensors only: no code runs). The cache is
bounded (``LETHE_WEIGHTS_CACHE_BYTES``; least recently used files go first, never one in
use by this call) and never outlives an erasure: purging a version deletes every version of
its objects on a versioned bucket, aborts their unfinished multipart uploads and removes the
purging node's copy; every other node drops its copy when it next ``reconcile``s (a worker at
the start and the end of each job and every ``LETHE_CACHE_SWEEP_S`` while idle, the gateway's
sweeper on each tick): a cached file whose object no longer exists is deleted.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import threading
import time
import uuid

from ..objectstore import ObjectFiles

# the files the cache manages (anything else under the directory, e.g. retrain-order
# snapshots or a write in progress, is left alone)
_CACHED = re.compile(r"^([^/]+/(members/|slices/)?[0-9a-f]{64}\.(safetensors|bundle\.json)"
                     r"|probes/[^/]+/[0-9a-f-]{36}\.sealed"  # + sealed forget rows (app/registry/probes.py)
                     r"|orders/[0-9a-f-]{36}/retained\.parquet)$")  # + retrain orders' snapshots (orders.py)
BUNDLE_SUFFIX = ".bundle.json"


class WeightStore:
    """The registry's weight files: ``root`` (local directory) and optionally ``url`` (an
    object store prefix; ``root`` is then a cache bounded by ``cache_bytes``, 0 = unbounded)."""

    def __init__(self, root: str, url: str = "", cache_bytes: int = 0):
        self.root = root
        self.remote = ObjectFiles(url) if url else None
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()

    # --- names ---------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The local path of a name (an absolute storage path, written by older releases, is
        its own path and lives on local disk only)."""
        return rel if os.path.isabs(rel) else os.path.join(self.root, rel)

    def tmp_path(self, model_name: str, suffix: str = ".safetensors") -> str:
        d = os.path.join(self.root, model_name)
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, f".incoming-{uuid.uuid4().hex}{suffix}")

    # --- writes --------------------------------------------------------------------------
    def publish(self, tmp: str, rel: str) -> str:
        """Move a freshly written file to its name: uploaded first (with an object store), then
        renamed into place, so a cached file always has its object. Returns ``rel``."""
        dest = self.path(rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if self.remote is not None and not os.path.isabs(rel):
            self.remote.put_file(rel, tmp)
        os.replace(tmp, dest)
        self.trim(keep={dest})
        return rel

    def delete(self, rel: str) -> int:
        """Remove a file everywhere: the local copy, and on the object store every version and
        delete marker of the object and its unfinished multipart uploads. Returns the bytes
        freed on the object store (0 without one)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))
        if self.remote is None or os.path.isabs(rel):
            return 0
        freed = self.remote.purge(rel)
        self.remote.abort_uploads(rel)
        return freed

    # --- reads ---------------------------------------------------------------------------
    def fetch(self, rel: str, sha256: str | None = None) -> str:
        """The local path of ``rel``, downloaded first when only the object store has it
        (its bytes checked against ``sha256`` when given). FileNotFoundError when it is
        nowhere."""
        p = self.path(rel)
        if os.path.exists(p):
            with contextlib.suppress(OSError):
                os.utime(p)  # recently used: the last to be evicted
            return p
        if self.remote is None or os.path.isabs(rel):
            raise FileNotFoundError(p)
        self.remote.get_file(rel, p, sha256)
        self.trim(keep={p})
        return p

    def fetch_version(self, rel: str, sha256: str) -> str:
        """A version's weights made local: the checkpoint, or a bundle's manifest and every
        member it names (each checked against its sha256 as it arrives). Returns the path of
        the checkpoint / manifest."""
        p = self.fetch(rel, sha256)
        if rel.endswith(BUNDLE_SUFFIX) and self.remote is not None:
            for name, sha in self.members(rel):
                self.fetch(name, sha)
        return p

    def members(self, rel: str) -> list[tuple[str, str]]:
        """(name, sha256) of each member a bundle's manifest names."""
        import json

        with open(self.fetch(rel)) as f:
            doc = json.load(f)
        base = os.path.dirname(rel)
        return [(os.path.join(base, m["file"]), m["sha256"]) for m in doc.get("members", [])]

    def size(self, rel: str) -> int:
        """Bytes of ``rel`` (OSError when it is nowhere)."""
        p = self.path(rel)
        if os.path.exists(p) or self.remote is None or os.path.isabs(rel):
            return os.path.getsize(p)
        return self.remote.size_of(rel)

    def exists(self, rel: str) -> bool:
        if os.path.exists(self.path(rel)):
            return True
        return self.remote is not None and not os.path.isabs(rel) and self.remote.exists(rel)

    def slices(self, model_name: str):
        """The model's slice checkpoint store (``models.unlearn.shards`` SliceStore)."""
        from models.unlearn.shards import DirStore

        d = os.path.join(self.root, model_name, "slices")
        return DirStore(d) if self.remote is None else ObjectSlices(self, model_name)

    # --- the cache -----------------------------------------------------------------------
    def _cached(self) -> list[tuple[str, str, os.stat_result]]:
        """(name, path, stat) of every file the cache manages."""
        out = []
        if not os.path.isdir(self.root):
            return out
        for d, _, files in os.walk(self.root):
            for f in files:
                p = os.path.join(d, f)
                rel = os.path.relpath(p, self.root).replace(os.sep, "/")
                if _CACHED.match(rel):
                    with contextlib.suppress(FileNotFoundError):
                        out.append((rel, p, os.stat(p)))
        return out

    def cached_bytes(self) -> int:
        return sum(st.st_size for _, _, st in self._cached())

    def trim(self, keep: set[str] = frozenset()) -> int:
        """Evict least recently used files until the cache is within ``cache_bytes`` (only with
        an object store: without one this directory *is* the registry). Returns bytes evicted."""
        if self.remote is None or self.cache_bytes <= 0:
            return 0
        with self._lock:
            files = sorted(self._cached(), key=lambda t: t[2].st_mtime)
            total = sum(st.st_size for _, _, st in files)
            freed = 0
            for _, p, st in files:
                if total <= self.cache_bytes:
                    break
                if p in keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                    total -= st.st_size
                    freed += st.st_size
            return freed

    def reconcile(self) -> list[str]:
        """Delete every cached file whose object is gone from the object store (a version
        purged by another node, a stale slice dropped by another worker). Returns their names."""
        if self.remote is None:
            return []
        t0 = time.time()
        cached = self._cached()
        if not cached:
            return []
        live = set(self.remote.keys())
        gone = []
        for rel, p, st in cached:
            # a file written or used since the listing began is left for the next check (it was
            # uploaded before it was renamed into place, or has just been read by a job)
            if rel not in live and st.st_mtime < t0 - 1:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                gone.append(rel)
        return gone


class ObjectSlices:
    """Slice checkpoints on the object store (same interface as ``DirStore``): a worker
    retraining a member reads the checkpoints another worker wrote."""

    def __init__(self, store: WeightStore, model_name: str):
        self.store, self.model = store, model_name

    def _name(self, key: str) -> str:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a slice key: {key!r}")
        return f"{self.model}/slices/{key}.safetensors"

    def get(self, key):
        from safetensors.torch import load_file

        try:
            return load_file(self.store.fetch(self._name(key)))
        except FileNotFoundError:
            return None

    def put(self, key, state):
        from safetensors.torch import save_file

        d = os.path.join(self.store.root, self.model, "slices")
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
            self.store.publish(tmp, self._name(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def delete(self, key: str) -> bool:
        name = self._name(key)
        had = self.store.exists(name)
        self.store.delete(name)
        return had


@functools.lru_cache(maxsize=32)
def _store(root: str, url: str, cache_bytes: int) -> WeightStore:
    return WeightStore(root, url, cache_bytes)


def weights(settings) -> WeightStore:
    """The registry's weight store for these settings (one per configuration and process)."""
    return _store(settings.registry_dir, settings.registry_url, settings.weights_cache_bytes)
