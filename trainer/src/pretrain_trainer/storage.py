"""Where checkpoints and exports live: a local directory or an object-store prefix (s3://,
gs://, through fsspec), behind one small interface. Object stores have no directories and no
rename; what differs between the two is said where it matters (checkpoint.py's commit).

Credentials and endpoints come from the provider's standard variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...), which the operator
puts in the pods from `secretRef`, or from the pod's workload identity.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pretrain_operator.api.common import Checkpoint
from pretrain_trainer.errors import ConfigurationError


@dataclass(frozen=True)
class Location:
    """A file or a directory/prefix on one filesystem; `str()` is its URL."""

    fs: Any  # fsspec.AbstractFileSystem (untyped)
    path: str

    @classmethod
    def of(cls, where: Location | str | os.PathLike[str]) -> Location:
        if isinstance(where, Location):
            return where
        text = os.fspath(where)
        if "://" not in text:
            return cls(fsspec.filesystem("file"), str(Path(text).absolute()))
        if text.startswith("file://"):
            return cls.of(text.removeprefix("file://"))
        # No listing cache: other ranks and other processes write under the same prefix.
        filesystem, path = fsspec.core.url_to_fs(text, use_listings_cache=False)
        return cls(filesystem, str(path).rstrip("/"))

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> Location:
        return Location(self.fs, posixpath.dirname(self.path))

    def child(self, name: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, name))

    def __truediv__(self, name: str) -> Location:
        return self.child(name)

    def __str__(self) -> str:
        return self.path if self.local else str(self.fs.unstrip_protocol(self.path))

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def read_text(self) -> str:
        return bytes(self.fs.cat_file(self.path)).decode()

    def write_text(self, text: str) -> None:
        """One PUT on an object store: readers see the old object or the new one, whole."""
        if self.local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.fs.pipe_file(self.path, text.encode())

    def children(self) -> list[Location]:
        """The entries right under this directory/prefix ([] where there is none)."""
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return [Location(self.fs, str(entry).rstrip("/")) for entry in entries
                if str(entry).rstrip("/") != self.path]  # fmt: skip

    def files(self) -> dict[str, dict[str, Any]]:
        """Every file under this directory/prefix by relative name, with fsspec's details."""
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.path + "/"
        return {str(path).removeprefix(prefix): info for path, info in found.items()
                if info.get("type") != "directory"}  # fmt: skip

    def remove(self) -> None:
        """Delete this directory/prefix and all under it (nothing where it is already gone)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path, recursive=True)

    def upload(self, directory: Path) -> None:
        """Copy the files of a local directory under this location, replacing what is there."""
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            name = path.relative_to(directory).as_posix()
            self.fs.put_file(str(path), posixpath.join(self.path, name))

    def download(self, directory: Path) -> Path:
        """Copy everything under this location into a local directory; that directory."""
        for name in self.files():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(posixpath.join(self.path, name), str(target))
        return directory


def object_version(info: dict[str, Any]) -> str:
    """What an object store says identifies an object's content (S3's ETag, GCS's generation or
    MD5): a rewritten or truncated object gets another."""
    for key in ("ETag", "etag", "md5Hash", "generation", "crc32c"):
        if info.get(key):
            return str(info[key]).strip('"')
    return ""


def checkpoint_root(settings: Checkpoint, output: Path) -> Location:
    """Where a run's checkpoints go: `spec.checkpoint.storage.uri` where the spec names one,
    else `output/checkpoints`."""
    from pretrain_trainer.data.sources import resolve

    uri = settings.storage.uri if settings.storage else None
    return Location.of(resolve(uri)) if uri else Location.of(output / "checkpoints")


STORAGE_FIELD = "spec.checkpoint.storage.uri"


def check_access(checkpoints: Location) -> None:
    """Refuse, naming the field, a checkpoint root the store will not let us use: a bucket that
    is not there or credentials it refuses (permanent: exit 78 before any training)."""
    if checkpoints.local:
        return
    bucket = checkpoints.path.split("/", 1)[0]
    try:
        checkpoints.fs.ls(bucket, detail=False)
    except PermissionError as error:
        raise ConfigurationError(f"{STORAGE_FIELD}: {checkpoints}: access refused by the store "
                                 f"({error})") from None  # fmt: skip
    except FileNotFoundError:
        raise ConfigurationError(f"{STORAGE_FIELD}: {checkpoints}: bucket {bucket} does not "
                                 "exist") from None  # fmt: skip


def publish(model_dir: Path, checkpoints: Location, output: Path) -> Location | None:
    """The exported model beside the checkpoints (`<storage>/model/`) where they live elsewhere
    than the run directory: in the bucket, or on the claim of a pod whose run directory it is."""
    if str(checkpoints) == str(Location.of(output / "checkpoints")):
        return None
    target = checkpoints / "model"
    if str(target) == str(Location.of(model_dir)):
        return None
    target.remove()
    target.upload(model_dir)
    return target
