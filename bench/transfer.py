"""Does our own pre-training pay? A tiny BERT pre-trained by a PretrainJob (masked LM on the
unlabeled docstrings, none of the held-out items among them) and then fine-tuned on the labeled
docstrings, against the same architecture, initial weights, tokenizer and fine-tuning recipe
without the pre-training. Reported: held-out accuracy of each, per fine-tuning method; the
ratio is pre-trained / from scratch (above 1: pre-training pays).

Everything runs through `pretrain run` (this process), on the offline sets of
`pretrain_trainer.labeled`.

    python -m bench.transfer docs --pretrain-steps 1500 --labels 80
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from pretrain_operator.api import PretrainJobSpec
from pretrain_trainer.build import build_model
from pretrain_trainer.cli import main as pretrain
from pretrain_trainer.corpus import build_image_corpus, build_text_corpus
from pretrain_trainer.export import export_model
from pretrain_trainer.labeled import build_labeled
from pretrain_trainer.tokenizer import load_tokenizer

METHODS = {"Full": (1.0e-3, 120), "LinearProbe": (1.0e-2, 300)}  # learning rate, steps


@dataclass(frozen=True, slots=True)
class Task:
    """A pre-training on unlabeled data and the labeled task it is measured on."""

    family: str  # the base's model family, also the pre-training's name
    pretraining: dict[str, Any]  # the PretrainJob spec, less maxSteps
    task: dict[str, Any]  # the FinetuneJob's spec.task
    labeled: str  # the labeled set's directory under the corpus


TASKS = {
    # Masked LM on the docstrings outside the held-out set; their module family as the label.
    "docs": Task(
        "bert",
        {"objective": {"type": "MaskedLM"}, "model": {"family": "bert", "size": "tiny"},
         "tokenizer": {"type": "WordPiece", "vocabSize": 2048},
         "data": {"sources": [{"uri": "pvc://corpus/docs-unlabeled.jsonl"}],
                  "sequenceLength": 64, "validationFraction": 0.02},
         "training": {"globalBatchSize": 32, "microBatchSize": 32}},
        {"type": "SequenceClassification", "numLabels": 4},
        "docs-classify",
    ),
    # MAE on the digits outside the held-out set.
    "digits": Task(
        "vit",
        {"objective": {"type": "MaskedImage"},
         "model": {"family": "vit", "size": "tiny",
                   "overrides": {"imageSize": 32, "patchSize": 4}},
         "data": {"sources": [{"uri": "pvc://corpus/digits-unlabeled", "format": "imagefolder"}],
                  "validationFraction": 0.05},
         "training": {"globalBatchSize": 64, "microBatchSize": 64,
                      "optimizer": {"weightDecay": 0.05}}},
        {"type": "ImageClassification", "numLabels": 10},
        "digits-labeled",
    ),
}  # fmt: skip


def pretraining(task: Task, steps: int, tokenizer_uri: str = "") -> dict[str, Any]:
    """The PretrainJob spec of `task`'s base; `tokenizer_uri` pins its tokenizer (text only)."""
    spec = json.loads(json.dumps(task.pretraining))
    spec["training"].update({
        "maxSteps": steps, "precision": "fp32",
        "optimizer": {"learningRate": 1.0e-3, **spec["training"].get("optimizer", {})},
        "schedule": {"warmupSteps": max(5, steps // 20)},
    })  # fmt: skip
    if tokenizer_uri:
        spec["tokenizer"]["uri"] = tokenizer_uri
    return {**spec, "checkpoint": {"everySteps": 500}}


def finetuning(task: Task, method: str, base: dict[str, Any], train: str) -> dict[str, Any]:
    rate, steps = METHODS[method]
    return {
        "base": base,
        "task": task.task,
        "method": {"type": method},
        "data": {"train": {"uri": f"pvc://corpus/{task.labeled}/{train}"},
                 "validation": {"uri": f"pvc://corpus/{task.labeled}/validation.jsonl"},
                 "sequenceLength": 96},
        "evaluation": {"everySteps": steps, "metrics": ["accuracy", "macroF1"]},
        "training": {"globalBatchSize": 32, "microBatchSize": 32, "maxSteps": steps,
                     "precision": "fp32", "schedule": {"warmupSteps": 5},
                     "optimizer": {"learningRate": rate, "weightDecay": 0.01}},
        "checkpoint": {"everySteps": 1000},
    }  # fmt: skip


def run(kind: str, spec: dict[str, Any], output: Path, root: Path, *extra: str) -> None:
    """`pretrain run` of one manifest, quietly; a failure raises with its message."""
    manifest = {"apiVersion": "pretrain.dev/v1alpha1", "kind": kind,
                "metadata": {"name": output.name}, "spec": spec}  # fmt: skip
    path = output.parent / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = pretrain(["run", "-f", str(path), "--output", str(output), "--quiet",
                         "--pvc-root", str(root), *extra])  # fmt: skip
    if code != 0:
        raise RuntimeError(f"pretrain run {path} exited {code}: {errors.getvalue()[-2000:]}")


def accuracy(output: Path) -> float:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return float([line["eval"] for line in lines if "eval" in line][-1]["accuracy"])


def scratch_base(task: Task, pretrained: Path, steps: int, directory: Path) -> Path:
    """The pre-training's architecture, initial weights and tokenizer, untrained."""
    spec = PretrainJobSpec.model_validate(pretraining(task, steps))
    tokenizer_file = pretrained / "model" / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file.exists() else None
    torch.manual_seed(spec.training.seed)  # the initial weights the pre-training started from
    model = build_model(spec, tokenizer.get_vocab_size() if tokenizer else 0)
    return export_model(model, spec, tokenizer, directory)


def label_budget(directory: Path, labels: int) -> str:
    """The first `labels` training records, as many of each label; the file's name beside
    train.jsonl (train.jsonl itself for all of them)."""
    records = [json.loads(line) for line in (directory / "train.jsonl").read_text().splitlines()]
    if labels >= len(records):
        return "train.jsonl"
    names = sorted({record["label"] for record in records})
    chosen = [r for name in names for r in [r for r in records if r["label"] == name][
        : labels // len(names)]]  # fmt: skip
    target = f"train-{len(chosen)}.jsonl"
    (directory / target).write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return target


def corpus_under(root: Path) -> Path:
    """The claim `corpus` under `root`, with every labeled set (built on first use)."""
    corpus = root / "corpus"
    if not (corpus / "docs-classify" / "train.jsonl").exists():
        build_text_corpus(corpus)
        build_image_corpus(corpus)
        build_labeled(corpus)
    return corpus


def pretrained_base(root: Path, name: str, steps: int, tokenizer_uri: str = "") -> Path:
    """The run directory of `name`'s pre-training for `steps` (run once, on first use)."""
    corpus_under(root)
    base = root / f"{TASKS[name].family}-{steps}"
    if not (base / "model").is_dir():
        run("PretrainJob", pretraining(TASKS[name], steps, tokenizer_uri), base, root)
    return base


def measure(
    root: Path, name: str, pretrain_steps: int, labels: int, tokenizer_uri: str = ""
) -> dict[str, Any]:
    task = TASKS[name]
    train = label_budget(corpus_under(root) / task.labeled, labels)
    base = pretrained_base(root, name, pretrain_steps, tokenizer_uri)
    untrained = scratch_base(task, base, pretrain_steps, root / f"{task.family}-untrained")
    rows = {}
    for method in METHODS:
        scores = {}
        # The base's kind in the spec; `--base` says where this machine has it.
        bases: dict[str, tuple[dict[str, Any], Path]] = {
            "pretrained": ({"pretrainJob": task.family}, base),
            "scratch": ({"huggingFace": {"uri": "file:///scratch"}}, untrained),
        }
        for side, (kind, directory) in bases.items():
            output = (
                root / f"{name}-{method}-{side}-{pretrain_steps}-{train.removesuffix('.jsonl')}"
            )
            if not (output / "model").is_dir():
                run("FinetuneJob", finetuning(task, method, kind, train), output, root,
                    "--base", str(directory))  # fmt: skip
            scores[side] = accuracy(output)
        rows[method] = {**scores, "ratio": scores["pretrained"] / scores["scratch"]}
    pretrained_by = task.pretraining["objective"]["type"]
    summary = f"{name}: {pretrained_by} {pretrain_steps} steps, {labels} labels; " + "; ".join(
        f"{method}: pre-trained {row['pretrained']:.3f} vs scratch {row['scratch']:.3f} "
        f"({row['ratio']:.2f})"
        for method, row in rows.items()
    )
    return {"task": name, "pretrain_steps": pretrain_steps, "labels": labels, "methods": rows,
            "summary": summary}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--labels", type=int, default=80, help="labeled examples to train on")
    parser.add_argument("--dir", type=Path, default=Path(".bench") / "transfer",
                        help="corpus, runs (kept: a rerun reuses finished ones)")  # fmt: skip
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(measure(args.dir.resolve(), args.task, args.pretrain_steps, args.labels)["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
