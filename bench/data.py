"""The data pipeline at pre-training scale (`python -m bench data`): what a resume costs by the
sample it resumes at, from token shards and from raw text side by side; how many tokens one core
turns into training samples from shards; and the trainer against the plain loop on shards.

- Resume: a fresh mixture at sample `start` and the first global batch (256 sequences of 1,024
  tokens) read, the sources opened included. Shards compute sample i from i; raw text replays and
  re-tokenizes every sample before `start`.
- Pipeline: samples of 1,024 tokens (tokens and document numbers, as the objectives take them)
  per CPU second of this process, one thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import trainer_throughput
from bench.stats import median

ROOT = Path(__file__).resolve().parent.parent
LENGTH, BATCH, SEED = 1024, 256, 0


def _data(uri: str, data_format: str) -> Any:
    from pretrain_operator.api.pretrain import Data

    return Data.model_validate({"sources": [{"uri": uri, "format": data_format}],
                                "sequenceLength": LENGTH, "validationFraction": 0.01})  # fmt: skip


def resume_from_shards(uri: str, start: int) -> float:
    from pretrain_trainer.data import indexed

    began = time.perf_counter()
    data = _data(uri, "tokens")
    mixture = indexed.training_samples(data, indexed.token_sources(data), SEED, start)
    _, samples = mixture.take(BATCH)
    for sample in samples:
        assert len(sample.tokens) == LENGTH
    return time.perf_counter() - began


def resume_from_text(corpus: Path, tokenizer: Any, start: int) -> float:
    from pretrain_trainer.data import text

    began = time.perf_counter()
    data = _data(f"file://{corpus / 'python-docs.jsonl'}", "jsonl")
    eos = tokenizer.token_to_id("[EOS]")
    _, samples = text.training_samples(data, tokenizer, SEED, eos, start).take(BATCH)
    assert all(len(sample.tokens) == LENGTH for sample in samples)
    return time.perf_counter() - began


def pipeline_tokens_per_cpu_second(uri: str, seconds: float) -> float:
    from pretrain_trainer.data import indexed

    data = _data(uri, "tokens")
    mixture = indexed.training_samples(data, indexed.token_sources(data), SEED, 12_345)
    tokens, began = 0, time.process_time()
    while time.process_time() - began < seconds:
        _, samples = mixture.take(BATCH)
        tokens += sum(len(sample.tokens) for sample in samples)
    return tokens / (time.process_time() - began)


def measure(quick: bool) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer

    from pretrain_trainer.data import indexed

    torch.set_num_threads(1)
    corpus = trainer_throughput.ensure_corpus(ROOT / ".bench" / "corpus")
    uri = trainer_throughput.prepared_uri("gpt", corpus)
    runs = 1 if quick else 5
    positions = [1_000, 100_000, 10_000_000]
    shards = {p: median([resume_from_shards(uri, p) for _ in range(runs)]) for p in positions}
    ratio = shards[10_000_000] / shards[1_000]
    tokenizer = Tokenizer.from_str(indexed.TokenSource(uri, "bench").tokenizer_json)
    text_positions = [1_000, 4_000] if quick else [1_000, 4_000, 16_000]
    text = {p: resume_from_text(corpus, tokenizer, p) for p in text_positions}
    per_core = pipeline_tokens_per_cpu_second(uri, 1.0 if quick else 5.0)
    settings = trainer_throughput.Settings(
        **({"steps": 4, "warmup": 2, "runs": 1} if quick else {}), data_format="tokens"
    )
    trainer = trainer_throughput.compare(["gpt"], settings, corpus)["models"]["gpt"]
    summary = (
        f"resume at sample 10,000,000 takes {ratio:.2f} x the time at sample 1,000; pipeline "
        f"{per_core:,.0f} tokens/s per core; trainer/plain per CPU second "
        f"{trainer['cpu_ratio']:.3f}"
    )
    return {
        "summary": summary,
        "resume_seconds_from_shards": shards,
        "resume_seconds_from_text": text,
        "pipeline_tokens_per_cpu_second": per_core,
        "trainer_on_shards": trainer,
    }
