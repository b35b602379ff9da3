"""Token shards (`pretrain prepare`, the `tokens` source format): they hold exactly what the
in-loop path tokenizes, a rerun writes nothing, a corrupted or unfinished preparation is refused by
name, and sample i is computed from i, the same whether a run reached it or resumed at it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer

from pretrain_operator.api import PretrainJobSpec
from pretrain_operator.api.pretrain import Data
from pretrain_trainer.data import indexed, shards, text
from pretrain_trainer.data.prepare import prepare, write_source
from pretrain_trainer.data.sources import DataError, resolve
from trainer_runs import JOB, finished, pretrain, step_losses

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SEED = 11


def tokens_data(*uris: str, weights: tuple[float, ...] = (), length: int = 32) -> Data:
    weights = weights or (1.0,) * len(uris)
    pairs = zip(uris, weights, strict=True)
    return Data.model_validate({
        "sources": [{"uri": u, "format": "tokens", "weight": w} for u, w in pairs],
        "sequenceLength": length, "validationFraction": 0.05,
    })  # fmt: skip


def same(a: text.TextSample, b: text.TextSample) -> bool:
    return torch.equal(a.tokens, b.tokens) and torch.equal(a.documents, b.documents)


def small_job(corpus: Path) -> PretrainJobSpec:
    spec = json.loads(json.dumps(JOB["spec"]))
    spec["data"]["sources"] = [{"uri": f"file://{corpus}"}]
    return PretrainJobSpec.model_validate(spec)


def write_corpus(path: Path, documents: int, start: int = 0) -> Path:
    with path.open("a") as handle:
        for n in range(start, start + documents):
            handle.write(json.dumps({"text": f"document {n}: " + "words of text " * (n % 7 + 3)}))
            handle.write("\n")
    return path


def test_shards_hold_exactly_the_samples_of_the_in_loop_path(
    prepared_corpus: str, pvc_root: Path
) -> None:
    source = indexed.TokenSource(prepared_corpus, "spec.data.sources[0]")
    assert len(source.manifest.shards) > 3  # windows are read across shard boundaries
    tokenizer = Tokenizer.from_str(source.tokenizer_json)
    eos = tokenizer.token_to_id("[EOS]")
    assert eos is not None
    raw = Data.model_validate({"sources": [{"uri": f"file://{pvc_root}/corpus/python-docs.jsonl"}],
                               "sequenceLength": 32, "validationFraction": 0.05})  # fmt: skip
    expected = text.packed(text.split_texts(raw, 0, SEED, validation=False), tokenizer, 32, eos)
    training, _ = indexed.splits(source, SEED, 0.05, 32)
    count = 0
    for k, sample in enumerate(expected):
        assert same(training.window(k), sample), f"window {k}"
        count += 1
    assert count == training.windows > 10_000
    prepared = tokens_data(prepared_corpus)
    held_out = indexed.validation_samples(prepared, [source], SEED, 40)
    reference = text.validation_samples(raw, tokenizer, SEED, eos, 40)
    assert len(held_out) == len(reference) == 40
    assert all(same(a, b) for a, b in zip(held_out, reference, strict=True))


def test_an_epoch_visits_every_window_once_in_a_seeded_order() -> None:
    for size in (1, 2, 3, 1000, 4097):
        order = [indexed.permuted(i, size, key=5) for i in range(size)]
        assert sorted(order) == list(range(size))
    order = [indexed.permuted(i, 1000, key=5) for i in range(1000)]
    assert order != list(range(1000))
    assert order != [indexed.permuted(i, 1000, key=6) for i in range(1000)]


def test_sample_i_is_the_same_reached_or_resumed_at_and_the_mix_is_exact_per_block(
    prepared_corpus: str,
) -> None:
    data = tokens_data(prepared_corpus, prepared_corpus, weights=(1.0, 3.0))
    sources = indexed.token_sources(data)
    reached = indexed.training_samples(data, sources, SEED)
    for _ in range(5):
        reached.take(100)
    _, samples = reached.take(100)
    resumed = indexed.training_samples(data, sources, SEED, start=500)
    indices, again = resumed.take(100)
    assert indices == list(range(500, 600))
    assert all(same(a, b) for a, b in zip(samples, again, strict=True))
    ahead = indexed.training_samples(data, sources, SEED, start=400)
    ahead.read_ahead([0, 7, 99])  # a rank's share, read while the step trains
    try:
        for _ in range(2):
            _, early = ahead.take(100)
        assert all(same(early[i], again[i]) for i in range(100))
    finally:
        ahead.close()
    assert reached.quotas == [1024, 3072]
    block, _ = reached._block(7)
    assert [int((block == s).sum()) for s in (0, 1)] == [1024, 3072]


def test_a_rerun_writes_nothing_and_a_changed_input_is_prepared_again(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 300)
    spec = small_job(corpus)
    (first,) = prepare(spec, str(tmp_path / "out"), workers=1, shard_tokens=2_000)
    assert len(first.manifest.shards) > 3
    assert all(s.tokens <= 2_000 for s in first.manifest.shards)  # shards of a bounded size
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first_dir(first).iterdir()}
    (again,) = prepare(spec, str(tmp_path / "out"), workers=1, shard_tokens=2_000)
    assert again.reused
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first_dir(again).iterdir()
            } == files  # fmt: skip
    write_corpus(corpus, 10, start=300)
    (changed,) = prepare(spec, str(tmp_path / "out"), workers=2, shard_tokens=2_000)
    assert not changed.reused
    assert changed.manifest.documents == first.manifest.documents + 10
    # Worker processes or not, the same inputs give the same bytes (the Byte tokenizer).
    assert changed.manifest.shards[0].sha256 == first.manifest.shards[0].sha256


def first_dir(prepared: object) -> Path:
    return Path(resolve(prepared.uri))  # type: ignore[attr-defined]


def test_a_corrupted_shard_is_named_and_never_trained_on(tmp_path: Path) -> None:
    (result,) = prepare(small_job(write_corpus(tmp_path / "c.jsonl", 300)), str(tmp_path / "out"),
                        workers=1, shard_tokens=2_000)  # fmt: skip
    shard = first_dir(result) / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[shards.HEADER.size + 10] ^= 0xFF
    shard.write_bytes(bytes(data))
    source = indexed.TokenSource(result.uri, "spec.data.sources[0]")
    training, _ = indexed.splits(source, SEED, 0.05, 32)
    windows = (training.window(k) for k in range(training.windows))
    with pytest.raises(DataError, match=r"spec\.data\.sources\[0\]\.uri: .*shard-00001\.bin: its "
                       "SHA-256 does not match the manifest"):  # fmt: skip
        list(windows)


def test_a_preparation_that_dies_half_way_leaves_no_manifest_and_is_redone(
    tmp_path: Path,
) -> None:
    spec = small_job(write_corpus(tmp_path / "c.jsonl", 300))
    (done,) = prepare(spec, str(tmp_path / "out"), workers=1, shard_tokens=2_000)
    tokenizer = Tokenizer.from_str(indexed.TokenSource(done.uri, "s").tokenizer_json)

    def dying() -> object:
        yield from ("a document of text " * 50 for _ in range(100))
        raise OSError("the node went away")

    with pytest.raises(OSError, match="went away"):
        write_source(dying(), tokenizer, done.directory, "other inputs", 1, 2_000)  # type: ignore[arg-type]
    assert not (first_dir(done) / shards.MANIFEST).exists()
    with pytest.raises(DataError, match=r"spec\.data\.sources\[0\]\.uri: .* has no manifest\.json"):
        indexed.TokenSource(done.uri, "spec.data.sources[0]")
    (redone,) = prepare(spec, str(tmp_path / "out"), workers=1, shard_tokens=2_000)
    assert not redone.reused
    assert redone.manifest.shards == done.manifest.shards  # the same bytes as the first time


def test_the_readme_commands_prepare_the_example_corpus_and_train_on_it(
    pvc_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "claims"
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "python-docs.jsonl").symlink_to(pvc_root / "corpus" / "python-docs.jsonl")
    prepared = subprocess.run(
        [sys.executable, "-m", "pretrain_trainer", "prepare", "-f", EXAMPLES / "gpt-tiny-cpu.yaml",
         "--output", "pvc://corpus/prepared", "--pvc-root", root, "--quiet"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    assert yaml.safe_load(prepared.stdout) == {"sources": [
        {"uri": "pvc://corpus/prepared/source-0", "format": "tokens", "weight": 1.0}]}  # fmt: skip
    assert "documents" in prepared.stderr
    assert "tokens in" in prepared.stderr
    output = tmp_path / "run"
    finished(pretrain("-f", EXAMPLES / "gpt-tiny-tokens-cpu.yaml", "--output", output,
                      "--max-steps", 30, pvc_root=root))  # fmt: skip
    losses = step_losses(output)
    assert sorted(losses) == list(range(1, 31))
    assert losses[30] < losses[1] - 0.5
