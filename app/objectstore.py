"""Objects on an S3-compatible store, for the dataset store's fragments and the registry's
weights: reads and writes through ``pyarrow.fs`` and, for what a filesystem interface cannot
say, the S3 API (``boto3``). Physical erasure on a versioned bucket means deleting every
version and delete marker of an object, and aborting unfinished multipart uploads (their
parts hold bytes too)."""
from __future__ import annotations

import os
from typing import Callable

import pyarrow as pa


class ObjectFiles:
    """Objects under one prefix of an object store (a dataset's fragments, the registry's
    weights), through ``pyarrow.fs`` (reads and writes) and, for what a filesystem interface
    cannot say, the S3 API (``boto3``): physical erasure on a versioned bucket means deleting
    every version and delete marker of the object, and aborting unfinished multipart uploads
    (their parts hold bytes too). Names are paths relative to the prefix (``a/b.parquet``).

    ``url``: ``s3://bucket/prefix`` with pyarrow's query options, e.g.
    ``?endpoint_override=127.0.0.1:9000&scheme=http`` for an S3-compatible server;
    credentials from the usual AWS environment variables."""

    def __init__(self, url: str):
        from urllib.parse import parse_qs, urlsplit

        import pyarrow.fs as pafs

        self.url = url
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(f"an object store URL must be s3://bucket/prefix; got {url!r}")
        self.fs, path = pafs.FileSystem.from_uri(url)
        self.base = path.rstrip("/")
        self.bucket, _, self.prefix = self.base.partition("/")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._endpoint = (f"{q.get('scheme', 'https')}://{q['endpoint_override']}"
                          if q.get("endpoint_override") else None)
        self._region = q.get("region")
        self._client = None

    @staticmethod
    def child(url: str, name: str) -> str:
        base, sep, query = url.partition("?")
        return f"{base.rstrip('/')}/{name}" + (sep + query if sep else "")

    @property
    def s3(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self._endpoint, region_name=self._region)
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def open(self, name: str):
        return self.fs.open_input_file(f"{self.base}/{name}")

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.base}/{name}").type != pafs.FileType.NotFound

    def write(self, name: str, fill: Callable) -> int:
        """One PUT of the whole fragment (bounded in size): atomic, and no multipart upload
        is left behind by a write cut short."""
        sink = pa.BufferOutputStream()
        fill(sink)
        body = sink.getvalue()
        self.s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=body.to_pybytes())
        return body.size

    def put_file(self, name: str, path: str) -> int:
        """Upload a local file (multipart above 64 MiB: the parts of an upload cut short are
        aborted by ``abort_uploads``); returns its size."""
        from boto3.s3.transfer import TransferConfig

        self.s3.upload_file(path, self.bucket, self._key(name),
                            Config=TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20))
        return os.path.getsize(path)

    def get_file(self, name: str, dest: str, sha256: str | None = None) -> int:
        """Download an object to ``dest`` (written beside it, fsynced, then renamed into place);
        with ``sha256``, the bytes must hash to it (ValueError otherwise, nothing left at
        ``dest``). FileNotFoundError when there is no such object. Returns its size."""
        import hashlib

        import botocore.exceptions

        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        tmp = f"{dest}.{os.urandom(6).hex()}.part"
        h, n = hashlib.sha256(), 0
        try:
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    raise FileNotFoundError(f"{self.url}: no object {name}") from e
                raise
            with open(tmp, "wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            if sha256 is not None and h.hexdigest() != sha256:
                raise ValueError(f"object {name} fails its sha256 check (got {h.hexdigest()[:16]}…, "
                                 f"expected {sha256[:16]}…)")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return n

    def size_of(self, name: str) -> int:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(f"{self.base}/{name}")
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.url}: no object {name}")
        return info.size or 0

    def keys(self) -> list[str]:
        """Every object's name under the prefix, at any depth (current versions)."""
        key = self.prefix + "/" if self.prefix else ""
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key):
            out += [o["Key"][len(key):] for o in page.get("Contents", [])]
        return out

    def names(self) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        return [i.base_name for i in infos if i.type == pafs.FileType.File]

    def size(self) -> int:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)

    def versions(self, name: str | None = None) -> list[dict]:
        """Every version and delete marker under the object (or the whole prefix)."""
        key = self._key(name) if name else (self.prefix + "/" if self.prefix else "")
        out = []
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
            out += [v for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                    if name is None or v["Key"] == key]
        return out

    def purge(self, name: str) -> int:
        """Delete every version of ``name``; returns the bytes they held."""
        freed = 0
        for v in self.versions(name):
            self.s3.delete_object(Bucket=self.bucket, Key=v["Key"], VersionId=v["VersionId"])
            freed += v.get("Size", 0)
        return freed

    def purge_all(self) -> int:
        """Delete every version and delete marker under the prefix (a removed store)."""
        freed = 0
        for v in self.versions():
            self.s3.delete_object(Bucket=self.bucket, Key=v["Key"], VersionId=v["VersionId"])
            freed += v.get("Size", 0)
        return freed

    def abort_uploads(self, name: str | None = None) -> int:
        """Abort the unfinished multipart uploads of ``name`` (or of the whole prefix)."""
        key = self._key(name) if name else (self.prefix + "/" if self.prefix else "")
        n = 0
        for page in self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=key):
            for u in page.get("Uploads", []):
                if name is not None and u["Key"] != key:
                    continue
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                n += 1
        return n
