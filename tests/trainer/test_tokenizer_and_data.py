"""Tokenizers trained on the job's data, and the data pipeline: formats, mixing by weight, a
deterministic and resumable order, a disjoint validation split, clear errors."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer

from fault_proxy import fault_proxy
from pretrain_operator.api.pretrain import Data, TokenizerType
from pretrain_trainer.data.mixture import source_choices
from pretrain_trainer.data.sources import DataError, documents
from pretrain_trainer.data.text import split_texts, training_samples
from pretrain_trainer.tokenizer import (
    SPECIAL_TOKENS,
    canonical,
    load_tokenizer,
    special_ids,
    train_tokenizer,
)

TEXTS = [
    f"Document {i}: the operator reconciles job {i} into {i % 7 + 1} pods." for i in range(400)
]


@pytest.mark.parametrize("kind", list(TokenizerType))
def test_every_tokenizer_kind_trains_and_has_the_special_tokens(kind: TokenizerType) -> None:
    tokenizer = train_tokenizer(kind, 400, TEXTS)
    ids = special_ids(tokenizer)
    assert [ids.pad, ids.unk, ids.cls, ids.sep, ids.mask, ids.eos] == [0, 1, 2, 3, 4, 5]
    assert tokenizer.token_to_id(SPECIAL_TOKENS[-1]) == len(SPECIAL_TOKENS) - 1
    encoded = tokenizer.encode("the operator reconciles job 12", add_special_tokens=False)
    assert ids.unk not in encoded.ids
    if kind != TokenizerType.BYTE:
        assert tokenizer.get_vocab_size() <= 400


TRAIN_IN_A_NEW_PROCESS = """
import json, sys
from pretrain_operator.api.pretrain import TokenizerType
from pretrain_trainer.tokenizer import train_tokenizer
texts = json.loads(sys.stdin.read())
print(train_tokenizer(TokenizerType(sys.argv[1]), 400, texts).to_str())
"""


@pytest.mark.parametrize("kind", [TokenizerType.UNIGRAM, TokenizerType.BPE])
def test_a_tokenizer_trained_twice_in_two_processes_is_the_same(kind: TokenizerType) -> None:
    """Hugging Face's Unigram trainer numbers its pieces in hash-map order, which differs from
    process to process, and its scores differ in the last bits; the trained tokenizer does not."""
    trained = [
        subprocess.run([sys.executable, "-c", TRAIN_IN_A_NEW_PROCESS, kind.value],
                       input=json.dumps(TEXTS), capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]  # fmt: skip
    assert trained[0] == trained[1]


def test_wordpiece_ids_do_not_depend_on_the_order_the_trainer_numbered_them() -> None:
    """The same WordPiece vocabulary numbered in two orders (what two processes give) is one
    tokenizer after training: the special tokens first, then the pieces in sorted order."""
    trained = json.loads(train_tokenizer(TokenizerType.WORD_PIECE, 400, TEXTS).to_str())
    vocab = trained["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.__getitem__)[len(SPECIAL_TOKENS) :]
    renumbered = []
    for order in (pieces, pieces[::-1]):
        trained["model"]["vocab"] = {
            p: i for i, p in enumerate([*SPECIAL_TOKENS, *order])
        }  # fmt: skip
        renumbered.append(canonical(Tokenizer.from_str(json.dumps(trained))).to_str())
    assert renumbered[0] == renumbered[1]
    assert json.loads(renumbered[0])["model"]["vocab"] == {
        p: i for i, p in enumerate([*SPECIAL_TOKENS, *sorted(pieces)])
    }  # fmt: skip


@pytest.mark.parametrize("kind", [TokenizerType.BPE, TokenizerType.BYTE])
def test_byte_level_tokenizers_encode_anything_and_round_trip(kind: TokenizerType) -> None:
    tokenizer = train_tokenizer(kind, 400, TEXTS)
    text = "naïve café, 東京 🚀 — unseen"
    encoded = tokenizer.encode(text, add_special_tokens=False)
    assert special_ids(tokenizer).unk not in encoded.ids
    assert tokenizer.decode(encoded.ids) == text


def test_a_saved_tokenizer_loads_back(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(TokenizerType.WORD_PIECE, 300, TEXTS)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    sentence = "the operator reconciles"
    assert loaded.encode(sentence).ids == tokenizer.encode(sentence).ids


def write_sources(tmp_path: Path) -> Data:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (tmp_path / "b.txt").write_text(
        "\n\n".join(f"plain paragraph {i} about training" for i in range(300))
    )
    table = pa.table({"body": [f"parquet row {i} of the corpus" for i in range(300)]})
    pq.write_table(table, tmp_path / "c.parquet")
    return Data.model_validate({
        "sources": [
            {"uri": f"file://{tmp_path}/a.jsonl", "format": "jsonl", "weight": 3},
            {"uri": f"file://{tmp_path}/b.txt", "format": "text", "weight": 1},
            {"uri": f"file://{tmp_path}/c.parquet", "format": "parquet", "field": "body"},
        ],
        "sequenceLength": 16,
        "validationFraction": 0.1,
    })  # fmt: skip


def test_every_format_reads_its_documents(tmp_path: Path) -> None:
    data = write_sources(tmp_path)
    counts = [sum(1 for _ in documents(s, f"s{i}")) for i, s in enumerate(data.sources)]
    assert counts == [400, 300, 300]
    assert next(documents(data.sources[2], "s2")) == "parquet row 0 of the corpus"


def test_sources_mix_by_weight() -> None:
    picks = Counter(source_choices([3.0, 1.0, 1.0], seed=5, start=0, count=10_000))
    assert abs(picks[0] / 10_000 - 0.6) < 0.02
    assert abs(picks[1] / 10_000 - 0.2) < 0.02


def test_order_is_deterministic_and_resumes_at_any_sample(tmp_path: Path) -> None:
    data = write_sources(tmp_path)
    tokenizer = train_tokenizer(TokenizerType.BPE, 300, TEXTS)
    _, straight = training_samples(data, tokenizer, 7, 5).take(40)
    indices, resumed = training_samples(data, tokenizer, 7, 5, start=25).take(15)
    assert indices == list(range(25, 40))
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(straight[25:], resumed, strict=True))
    _, other_seed = training_samples(data, tokenizer, 8, 5).take(40)
    assert not all(
        torch.equal(a.tokens, b.tokens) for a, b in zip(straight, other_seed, strict=True)
    )


def test_validation_documents_never_appear_in_training(tmp_path: Path) -> None:
    data = write_sources(tmp_path)
    train = set(split_texts(data, 0, seed=3, validation=False))
    held_out = set(split_texts(data, 0, seed=3, validation=True))
    assert train.isdisjoint(held_out)
    assert train | held_out == set(TEXTS)
    assert 0.05 < len(held_out) / len(TEXTS) < 0.15


def test_bad_sources_are_named(tmp_path: Path) -> None:
    data = write_sources(tmp_path)
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\nnot json\n')
    broken = data.sources[0].model_copy(update={"uri": f"file://{tmp_path}/broken.jsonl"})
    with pytest.raises(DataError, match=r"spec.data.sources\[0\]: .* line 2 is not JSON"):
        list(documents(broken, "spec.data.sources[0]"))
    missing = data.sources[2].model_copy(update={"field": "nope"})
    with pytest.raises(DataError, match=r"spec.data.sources\[2\].field: no column 'nope'"):
        list(documents(missing, "spec.data.sources[2]"))


def test_an_s3_prefix_is_listed_and_its_objects_read_in_order(s3_env: dict[str, str]) -> None:
    """Against the real S3 server of the tests (SeaweedFS), through s3fs as in the image."""
    import s3fs

    bucket = s3_env["PRETRAIN_TEST_BUCKET"]
    prefix = f"{bucket}/corpus-{secrets.token_hex(4)}"
    s3 = s3fs.S3FileSystem()
    s3.pipe(f"{prefix}/part-1.jsonl", b'{"text": "second part"}\n')
    s3.pipe(f"{prefix}/part-0.jsonl", b'{"text": "from the bucket"}\n{"text": "and more"}\n')
    s3.pipe(f"{prefix}/sub/part-2.jsonl", b'{"text": "a deeper shard"}\n')
    source = Data.model_validate({"sources": [{"uri": f"s3://{prefix}/"}]}).sources[0]
    assert list(documents(source, "spec.data.sources[0]")) == [
        "from the bucket", "and more", "second part", "a deeper shard",
    ]  # fmt: skip


def test_reads_broken_by_reset_connections_are_retried(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a proxy that resets connections in front of the real server: the listing and the
    reads are retried, and every document arrives once, in order."""
    import s3fs

    bucket = s3_env["PRETRAIN_TEST_BUCKET"]
    prefix = f"{bucket}/flaky-{secrets.token_hex(4)}"
    texts = [f"document {i}" for i in range(200)]
    for part in range(4):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[part * 50 : part * 50 + 50])
        s3fs.S3FileSystem().pipe(f"{prefix}/part-{part}.jsonl", lines.encode())
    endpoint = s3_env["AWS_ENDPOINT_URL"].removeprefix("http://")
    host, port = endpoint.rsplit(":", 1)
    with fault_proxy(host, int(port)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the client's own retries off: ours act
        s3fs.S3FileSystem.clear_instance_cache()
        proxy.reset(3)
        source = Data.model_validate({"sources": [{"uri": f"s3://{prefix}/"}]}).sources[0]
        assert list(documents(source, "spec.data.sources[0]")) == texts
        assert proxy.resets == 3


def test_s3_sources_that_cannot_be_read_are_named(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    bucket = s3_env["PRETRAIN_TEST_BUCKET"]
    missing = Data.model_validate({"sources": [{"uri": f"s3://{bucket}/no-such-prefix/"}]})
    with pytest.raises(
        DataError, match=r"spec.data.sources\[0\].uri: s3://.*/no-such-prefix/ does"
    ):
        list(documents(missing.sources[0], "spec.data.sources[0]"))
    no_bucket = Data.model_validate({"sources": [{"uri": "s3://no-such-bucket-here/corpus/"}]})
    with pytest.raises(DataError, match=r"spec.data.sources\[0\].uri: s3://no-such-bucket-here/"):
        list(documents(no_bucket.sources[0], "spec.data.sources[0]"))
    s3fs.S3FileSystem().pipe(f"{bucket}/refused/part-0.jsonl", b'{"text": "secret"}\n')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    refused = Data.model_validate({"sources": [{"uri": f"s3://{bucket}/refused/"}]})
    with pytest.raises(
        DataError, match=r"spec.data.sources\[1\].uri: s3://.*/refused/: .*refused"
    ) as error:
        list(documents(refused.sources[0], "spec.data.sources[1]"))
    assert "not-the-secret" not in str(error.value)  # a secret is never in a message


def test_a_gs_prefix_is_listed_and_read_in_order_through_reset_connections(
    gcs_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the tests' real Google Cloud Storage API server (fake-gcs-server), through gcsfs
    as in the image, and through a proxy that resets connections in front of it."""
    import gcsfs

    prefix = f"gs://{gcs_env['PRETRAIN_TEST_GCS_BUCKET']}/corpus-{secrets.token_hex(4)}"
    gcs = gcsfs.GCSFileSystem()
    gcs.pipe(f"{prefix}/part-1.jsonl", b'{"text": "second part"}\n')
    gcs.pipe(f"{prefix}/part-0.jsonl", b'{"text": "from the bucket"}\n{"text": "and more"}\n')
    gcs.pipe(f"{prefix}/sub/part-2.jsonl", b'{"text": "a deeper shard"}\n')
    host, port = gcs_env["STORAGE_EMULATOR_HOST"].removeprefix("http://").rsplit(":", 1)
    with fault_proxy(host, int(port)) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
        gcsfs.GCSFileSystem.clear_instance_cache()
        proxy.reset(3)
        source = Data.model_validate({"sources": [{"uri": f"{prefix}/"}]}).sources[0]
        assert list(documents(source, "spec.data.sources[0]")) == [
            "from the bucket", "and more", "second part", "a deeper shard",
        ]  # fmt: skip
        assert proxy.resets == 3
    gcsfs.GCSFileSystem.clear_instance_cache()
    missing = Data.model_validate({"sources": [{"uri": f"{prefix}-none/"}]})
    with pytest.raises(DataError, match=r"spec.data.sources\[0\].uri: gs://.*-none/ does"):
        list(documents(missing.sources[0], "spec.data.sources[0]"))
    no_bucket = Data.model_validate({"sources": [{"uri": "gs://no-such-bucket-here/corpus/"}]})
    with pytest.raises(DataError, match=r"spec.data.sources\[0\].uri: gs://no-such-bucket-here/"):
        list(documents(no_bucket.sources[0], "spec.data.sources[0]"))


def test_training_runs_under_bf16_autocast(tmp_path: Path) -> None:
    from pretrain_operator.api import PretrainJobSpec
    from pretrain_trainer.train import run

    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    spec = PretrainJobSpec.model_validate({
        "objective": {"type": "CausalLM"}, "model": {"family": "gpt", "size": "tiny"},
        "tokenizer": {"type": "Byte"},
        "data": {"sources": [{"uri": f"file://{tmp_path}/corpus.jsonl"}], "sequenceLength": 32,
                 "validationFraction": 0.2},
        "training": {"maxSteps": 3, "globalBatchSize": 8, "microBatchSize": 4, "precision": "bf16"},
    })  # fmt: skip
    summary = run(spec, tmp_path / "run")
    assert summary.steps == 3
    assert torch.isfinite(torch.tensor(summary.last_validation_loss))
