"""A study's artifacts in an object store (``[artifacts] store = "s3://bucket/prefix"``).

Workers on machines without a shared file system keep their checkpoints and the best model
in S3 (or any S3-compatible store: MinIO, Ceph, GCS's XML API; the endpoint comes from
boto3's usual settings, e.g. ``$AWS_ENDPOINT_URL``, and so do the credentials). Keras still
writes to the local `[artifacts] path`; studyctl mirrors it:

* every epoch's checkpoint (`training.checkpoints`) is uploaded to
  ``<prefix>/<study>/trial-<n>/`` once the epoch ends, and a retry on another machine
  downloads its original's checkpoint before it trains;
* the best trial's model goes to ``<prefix>/<study>/models/trial-<n>.keras`` and, as an
  Optuna artifact (`Boto3ArtifactStore`, keys at the bucket's root), to the dashboard.

boto3 is an optional dependency: ``pip install 'studyctl[s3]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from studyctl.errors import StudyctlError, one_line


def _client() -> Any:
    try:
        import boto3
    except ImportError:
        raise StudyctlError(
            "an s3:// artifact store needs boto3, which is not installed",
            hint="pip install 'studyctl[s3]'",
        ) from None
    return boto3.client("s3")


@dataclass(frozen=True)
class ObjectStore:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    @classmethod
    def parse(cls, url: str, where: str = "artifacts.store") -> ObjectStore:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise StudyctlError(
                f"{where}: expected s3://BUCKET[/PREFIX], got {url!r}",
                hint="leave it out to keep artifacts under [artifacts] path",
            )
        return cls(bucket=parts.netloc, prefix=parts.path.strip("/"))

    @property
    def client(self) -> Any:
        return _cached_client()

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def url(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def check(self, study: str) -> None:
        """Write and delete one object, or raise one line naming the store and the cause."""
        probe = self.key(study, f".studyctl-probe-{os.getpid()}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except StudyctlError:
            raise
        except Exception as exc:
            raise StudyctlError(
                f"study {study!r}: artifacts.store {self.url()} is not writable from here "
                f"({one_line(exc, with_type=False)})",
                hint="check the bucket, $AWS_ENDPOINT_URL and the credentials",
            ) from None

    def push_dir(self, local: Path, *parts: str) -> None:
        """Upload every file under `local` to the key prefix `parts` (same relative names)."""
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            relative = file.relative_to(local).as_posix()
            self.client.upload_file(str(file), self.bucket, self.key(*parts, relative))

    def pull_dir(self, local: Path, *parts: str) -> int:
        """Download every object under the key prefix `parts` into `local`; return the count."""
        base = self.key(*parts) + "/"
        count = 0
        for key in self._keys(base):
            target = local / key[len(base) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, key, str(target))
            count += 1
        return count

    def delete_dir(self, *parts: str) -> None:
        keys = self._keys(self.key(*parts) + "/")
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def put_file(self, local: Path, *parts: str) -> str:
        self.client.upload_file(str(local), self.bucket, self.key(*parts))
        return self.url(*parts)

    def delete(self, *parts: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(*parts))

    def _keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def optuna_store(self) -> Any:
        from optuna.artifacts import Boto3ArtifactStore

        return Boto3ArtifactStore(self.bucket, client=self.client)


_CLIENT: list[Any] = []


def _cached_client() -> Any:
    if not _CLIENT:
        _CLIENT.append(_client())
    return _CLIENT[0]


def download(url: str, target: Path) -> None:
    """Copy the object at s3://BUCKET/KEY to `target`."""
    store = ObjectStore.parse(url, where="model_path")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        store.client.download_file(store.bucket, store.prefix, str(target))
    except Exception as exc:
        raise StudyctlError(f"cannot download {url}: {one_line(exc, with_type=False)}") from None
