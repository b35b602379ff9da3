"""Token shards: a corpus tokenized once (`pretrain prepare`), read by the `tokens` source format.

A prepared source is a directory (local, pvc://, s3:// or gs://) holding:

- `shard-NNNNN.bin`, each a header, the token ids and the shard's document boundaries:
    magic `PTOKSHD1` (8 bytes), version (u32), bytes per token (u32: 2 or 4),
    token count T (u64), document count D (u64), then T token ids (little-endian uint16 or
    uint32), zero padding to a multiple of 8 bytes, then D + 1 document offsets (u64, the first
    0, the last T). Every document ends with the tokenizer's [EOS]; no document spans shards.
- `index.bin`: the start of every document in the whole source's token sequence (u64, one per
  document and one past the end): what random access by sample index needs, in one file.
- `tokenizer.json`: the tokenizer that made the ids.
- `manifest.json`, written last: the shards with their sizes and SHA-256 sums, the totals, and a
  fingerprint of the inputs. A directory without one is unfinished, and never read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pretrain_trainer.storage import Location

MAGIC = b"PTOKSHD1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, tokens, documents
MANIFEST, INDEX, TOKENIZER = "manifest.json", "index.bin", "tokenizer.json"
FORMAT = "pretrain-tokens"
DEFAULT_SHARD_TOKENS = 1 << 25  # 64 MiB of uint16 ids: bounded memory for the writer


class ShardError(ValueError):
    """A prepared directory is unfinished, corrupted or of another format; says which file."""


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.bin"


def tokens_offset() -> int:
    return HEADER.size


def encode_shard(tokens: np.ndarray, boundaries: np.ndarray) -> bytes:
    """The bytes of one shard: `tokens` (the ids, already of the shard's dtype) and the document
    boundaries (D + 1 offsets into them)."""
    body = tokens.tobytes()
    padding = b"\0" * (-len(body) % 8)
    header = HEADER.pack(MAGIC, VERSION, tokens.dtype.itemsize, len(tokens), len(boundaries) - 1)
    return header + body + padding + boundaries.astype("<u8").tobytes()


def decode_header(data: bytes, name: str) -> tuple[int, int, int]:
    """(bytes per token, tokens, documents) of a shard's first HEADER.size bytes."""
    if len(data) < HEADER.size:
        raise ShardError(f"{name}: {len(data)} bytes, shorter than a shard header")
    magic, version, width, tokens, documents = HEADER.unpack(data[: HEADER.size])
    if magic != MAGIC or version != VERSION or width not in (2, 4):
        raise ShardError(f"{name}: not a version-{VERSION} token shard (magic {magic!r})")
    return width, tokens, documents


@dataclass(frozen=True)
class ShardEntry:
    file: str
    tokens: int
    documents: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    dtype: str
    vocab_size: int
    tokenizer_sha256: str
    inputs: str  # the fingerprint of what was prepared: same inputs, same shards
    shards: list[ShardEntry] = field(default_factory=list)
    format: str = FORMAT
    version: int = VERSION

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    def to_json(self) -> str:
        record = asdict(self)
        record["tokens"], record["documents"] = self.tokens, self.documents
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            record = json.loads(text)
            if record.get("format") != FORMAT or record.get("version") != VERSION:
                raise ShardError(f"{where}: not a {FORMAT} v{VERSION} manifest")
            shards = [ShardEntry(**entry) for entry in record["shards"]]
            return cls(record["dtype"], int(record["vocab_size"]), record["tokenizer_sha256"],
                       record["inputs"], shards)  # fmt: skip
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ShardError(f"{where}: a malformed manifest ({error})") from None


def read_manifest(directory: Location) -> Manifest | None:
    """The directory's manifest; None where there is none (never prepared, or unfinished)."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        return None
    return Manifest.from_json(manifest.read_text(), str(manifest))


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
