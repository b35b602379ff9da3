"""Reading a data source by URI, streaming: file://, pvc://CLAIM/path (a mounted claim), s3://,
gs:// through fsspec; formats text, jsonl and parquet. Nothing is loaded whole, so a corpus larger
than memory streams through."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import fsspec

from pretrain_operator import naming
from pretrain_operator.api.pretrain import DataFormat, DataSource

DEFAULT_PVC_ROOT = naming.CLAIMS_MOUNT  # where the operator mounts the claims
LOG = logging.getLogger("pretrain_trainer.data")
# An object store that answers 503 or drops connections is waited for: 1 + 2 + 4 + 8 + 16 s,
# beyond the client's own quick retries, then the error stands (and the pod is restarted).
ATTEMPTS = 6
FIRST_DELAY = 1.0
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
             UnicodeError, ValueError)  # fmt: skip
T = TypeVar("T")


class DataError(ValueError):
    """A source cannot be read; the message names the field and the URI."""


def pvc_root() -> Path:
    """Where pvc://CLAIM/... lives: claims are mounted as directories under this root."""
    return Path(os.environ.get("PRETRAIN_PVC_ROOT", DEFAULT_PVC_ROOT))


def resolve(uri: str) -> str:
    """An fsspec URL for a job URI."""
    if uri.startswith("pvc://"):
        return str(pvc_root() / uri.removeprefix("pvc://"))
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    return uri


def transient(error: BaseException) -> bool:
    """An error that may pass (a 503, a reset connection, a timeout): s3fs and gcsfs raise
    those as plain OSErrors or their clients' own types; a missing object or refused
    credentials (FileNotFoundError, PermissionError) or a malformed record is permanent."""
    if isinstance(error, PERMANENT):
        return False
    if isinstance(error, OSError | ConnectionError | TimeoutError):
        return True
    return type(error).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3",
                                                    "requests", "google")  # fmt: skip


def retrying(action: Callable[[], T], what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    for attempt in range(ATTEMPTS):
        try:
            return action()
        except Exception as error:
            if not transient(error) or attempt == ATTEMPTS - 1:
                raise
            _wait(what, error, attempt, sleep)
    raise AssertionError("unreachable")


def _wait(what: str, error: BaseException, attempt: int, sleep: Callable[[float], None]) -> None:
    delay = FIRST_DELAY * 2**attempt
    LOG.warning("%s: %s: %s; trying again in %.0f s (%d/%d)", what, type(error).__name__,
                error, delay, attempt + 1, ATTEMPTS - 1)  # fmt: skip
    sleep(delay)


def resumed(
    read: Callable[[], Iterator[T]], what: str, sleep: Callable[[float], None] = time.sleep
) -> Iterator[T]:
    """The items of `read()`, read again from the start after a transient error, the items
    already given skipped: the same sequence, once, as an undisturbed read gives."""
    given = 0
    for attempt in range(ATTEMPTS):
        try:
            for index, item in enumerate(read()):
                if index >= given:
                    given += 1
                    yield item
            return
        except Exception as error:
            if not transient(error) or attempt == ATTEMPTS - 1:
                raise
            _wait(what, error, attempt, sleep)


def list_files(uri: str, field: str) -> list[str]:
    """The files of a source, sorted (a directory lists its files recursively)."""
    return retrying(lambda: _list_files(uri, field), uri)


def _list_files(uri: str, field: str) -> list[str]:
    url = resolve(uri)
    filesystem, path = fsspec.core.url_to_fs(url)
    try:
        if not filesystem.exists(path):
            raise DataError(f"{field}: {uri} does not exist")
        if filesystem.isdir(path):
            files = sorted(f for f in filesystem.find(path) if not Path(f).name.startswith("."))
            if not files:
                raise DataError(f"{field}: {uri} is an empty directory")
            return [filesystem.unstrip_protocol(f) for f in files]
    except PermissionError as error:  # an object store refused the credentials: permanent
        raise DataError(f"{field}: {uri}: access refused by the store ({error})") from None
    return [filesystem.unstrip_protocol(path)]


def _documents_in_file(url: str, source: DataSource, field: str) -> Iterator[str]:
    if source.format == DataFormat.PARQUET:
        import pyarrow.parquet as pq

        with fsspec.open(url, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            if source.field not in parquet.schema_arrow.names:
                raise DataError(f"{field}.field: no column {source.field!r} in {url}")
            for batch in parquet.iter_batches(columns=[source.field], batch_size=1024):
                yield from (t for t in batch.column(0).to_pylist() if t)
        return
    with fsspec.open(url, "rt", encoding="utf-8", errors="replace") as handle:
        if source.format == DataFormat.JSONL:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{field}: {url} line {number} is not JSON: {error}") from None
                text = record.get(source.field) if isinstance(record, dict) else None
                if isinstance(text, str) and text:
                    yield text
        else:  # plain text: documents are separated by blank lines
            paragraph: list[str] = []
            for line in handle:
                if line.strip():
                    paragraph.append(line)
                elif paragraph:
                    yield "".join(paragraph).strip()
                    paragraph = []
            if paragraph:
                yield "".join(paragraph).strip()


def documents(source: DataSource, field: str) -> Iterator[str]:
    """Every document of a source, in a fixed order (files sorted, records in file order)."""
    if source.format == DataFormat.IMAGE_FOLDER:
        raise DataError(f"{field}.format: imagefolder holds images, not text")
    for url in list_files(source.uri, f"{field}.uri"):
        yield from resumed(functools.partial(_documents_in_file, url, source, field), url)
