"""Specs shared by the API tests: a valid PretrainJob and FinetuneJob, and a table of invalid
variants, each refused by the API server (CEL and schema) and by the pydantic models alike."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devcluster.nodes import NodePool

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
GROUP, VERSION = "pretrain.dev", "v1alpha1"

PRETRAIN: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "PretrainJob",
    "metadata": {"name": "valid"},
    "spec": {
        "objective": {"type": "MaskedLM"},
        "model": {"family": "bert", "size": "tiny"},
        "data": {"sources": [{"uri": "file:///data/corpus.jsonl"}]},
        "training": {"globalBatchSize": 32, "microBatchSize": 8, "maxSteps": 10},
    },
}
FINETUNE: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "FinetuneJob",
    "metadata": {"name": "valid"},
    "spec": {
        "base": {"pretrainJob": "bert-tiny"},
        "task": {"type": "SequenceClassification", "numLabels": 2},
        "data": {"train": {"uri": "file:///data/train.jsonl"}},
        "training": {"maxSteps": 10},
    },
}


def at(path: str) -> Callable[[dict[str, Any]], tuple[dict[str, Any], str]]:
    """Locate the parent object of a dotted path (a number indexes a list) and the last key."""

    def locate(manifest: dict[str, Any]) -> tuple[dict[str, Any], str]:
        *parents, last = path.split(".")
        node: Any = manifest
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        return node, last

    return locate


def mutated(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with each dotted path set to its value (None deletes the key)."""
    manifest = copy.deepcopy(base)
    for path, value in changes.items():
        parent, key = at(path)(manifest)
        if value is None:
            parent.pop(key, None)
        else:
            parent[key] = value
    return manifest


# (what is wrong, base manifest, changes, what the API server's message must name)
INVALID: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("min above max", PRETRAIN, {"spec.replicas": {"min": 3, "max": 2}}, "spec.replicas.min"),
    ("no nodes", PRETRAIN, {"spec.replicas": {"min": 1, "max": 0}}, "spec.replicas.max"),
    ("micro above global", PRETRAIN, {"spec.training.microBatchSize": 64}, "spec.training.microBatchSize"),
    ("no length", PRETRAIN, {"spec.training.maxSteps": None}, "maxSteps or maxTokens"),
    ("probability above 1", PRETRAIN, {"spec.objective.maskProbability": 1.5}, "spec.objective.maskProbability"),
    ("probability 0", PRETRAIN, {"spec.objective.maskProbability": 0}, "spec.objective.maskProbability"),
    ("objective off family", PRETRAIN, {"spec.objective.type": "CausalLM"}, "spec.model.family"),
    ("contrastive on bert", PRETRAIN, {"spec.objective": {"type": "Contrastive"}}, "spec.model.family"),
    ("unknown objective", PRETRAIN, {"spec.objective.type": "Autoregressive"}, "spec.objective.type"),
    ("unknown family", PRETRAIN, {"spec.model.family": "llama"}, "spec.model.family"),
    ("unknown size", PRETRAIN, {"spec.model.size": "huge"}, "spec.model.size"),
    ("parameter of another objective", PRETRAIN, {"spec.objective.maskRatio": 0.75}, "spec.objective.maskRatio"),
    ("zero temperature", PRETRAIN, {"spec.objective": {"type": "Contrastive", "temperature": 0}, "spec.model.family": "vit"}, "spec.objective.temperature"),
    ("heads do not divide width", PRETRAIN, {"spec.model.overrides": {"hiddenSize": 100, "heads": 3}}, "spec.model.overrides.hiddenSize"),
    ("no data", PRETRAIN, {"spec.data.sources": []}, "spec.data.sources"),
    ("http data", PRETRAIN, {"spec.data.sources.0.uri": "http://example.com/x"}, "spec.data.sources[0].uri"),
    ("unknown format", PRETRAIN, {"spec.data.sources.0.format": "csv"}, "spec.data.sources[0].format"),
    ("token shards mixed with text", PRETRAIN, {"spec.data.sources": [{"uri": "s3://b/t", "format": "tokens"}, {"uri": "s3://b/c.jsonl"}]}, "spec.data.sources"),
    ("token shards for images", PRETRAIN, {"spec.objective": {"type": "MaskedImage"}, "spec.model.family": "vit", "spec.data.sources.0.format": "tokens"}, "spec.data.sources"),
    ("token shards to fine-tune", FINETUNE, {"spec.data.train.format": "tokens"}, "spec.data.train.format"),
    ("short sequences", PRETRAIN, {"spec.data.sequenceLength": 4}, "spec.data.sequenceLength"),
    ("validation half", PRETRAIN, {"spec.data.validationFraction": 0.9}, "spec.data.validationFraction"),
    ("negative learning rate", PRETRAIN, {"spec.training.optimizer": {"learningRate": -1}}, "spec.training.optimizer.learningRate"),
    ("one beta", PRETRAIN, {"spec.training.optimizer": {"betas": [0.9]}}, "spec.training.optimizer.betas"),
    ("beta of 1.5", PRETRAIN, {"spec.training.optimizer": {"betas": [0.9, 1.5]}}, "spec.training.optimizer.betas"),
    ("int8 precision", PRETRAIN, {"spec.training.precision": "int8"}, "spec.training.precision"),
    ("unknown strategy", PRETRAIN, {"spec.training.strategy": "ZeRO"}, "spec.training.strategy"),
    ("zero accelerators", PRETRAIN, {"spec.resources": {"accelerator": {"type": "nvidia.com/gpu", "count": 0}}}, "spec.resources.accelerator.count"),
    ("unknown accelerator", PRETRAIN, {"spec.resources": {"accelerator": {"type": "intel.com/gpu"}}}, "spec.resources.accelerator.type"),
    ("topology on a GPU", PRETRAIN, {"spec.resources": {"accelerator": {"type": "nvidia.com/gpu", "topology": "2x2"}}}, "spec.resources.accelerator.topology"),
    ("cpu not a quantity", PRETRAIN, {"spec.resources": {"cpu": "lots"}}, "spec.resources.cpu"),
    ("two checkpoint stores", PRETRAIN, {"spec.checkpoint": {"storage": {"persistentVolumeClaim": "c", "uri": "s3://b/c"}}}, "spec.checkpoint.storage"),
    ("keep no checkpoint", PRETRAIN, {"spec.checkpoint": {"keep": 0}}, "spec.checkpoint.keep"),
    ("negative restarts", PRETRAIN, {"spec.failurePolicy": {"maxRestarts": -1}}, "spec.failurePolicy.maxRestarts"),
    ("bad pull policy", PRETRAIN, {"spec.template": {"imagePullPolicy": "Sometimes"}}, "spec.template.imagePullPolicy"),
    ("grace too short to save", PRETRAIN, {"spec.template": {"terminationGracePeriodSeconds": 5}}, "spec.template.terminationGracePeriodSeconds"),
    ("grace above an hour", FINETUNE, {"spec.template": {"terminationGracePeriodSeconds": 7200}}, "spec.template.terminationGracePeriodSeconds"),
    ("unknown field", PRETRAIN, {"spec.objective.maskProbabilty": 0.2}, "spec.objective.maskProbabilty"),
    ("name too long", PRETRAIN, {"metadata.name": "a" * 41}, "metadata.name"),
    ("name starts with a digit", PRETRAIN, {"metadata.name": "7b-model"}, "metadata.name"),
    ("two bases", FINETUNE, {"spec.base.huggingFace": {"uri": "file:///m"}}, "spec.base"),
    ("no base", FINETUNE, {"spec.base": {}}, "spec.base"),
    ("lora without LoRA", FINETUNE, {"spec.method": {"type": "Full", "lora": {"rank": 4}}}, "spec.method.lora"),
    ("classification without labels", FINETUNE, {"spec.task.numLabels": None}, "spec.task.numLabels"),
    ("unknown task", FINETUNE, {"spec.task.type": "Regression"}, "spec.task.type"),
    ("lora rank 0", FINETUNE, {"spec.method": {"type": "LoRA", "lora": {"rank": 0}}}, "spec.method.lora.rank"),
    ("unknown metric", FINETUNE, {"spec.evaluation": {"metrics": ["bleu"]}}, "spec.evaluation.metrics[0]"),
]  # fmt: skip


# A small job for the kwok nodes of `pool`: pods are created and scheduled, never run.
def pretrain_job(
    name: str, pool: NodePool, min_nodes: int = 1, max_nodes: int = 1, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PretrainJob",
        "metadata": {"name": name},
        "spec": {
            "objective": {"type": "CausalLM"},
            "model": {"family": "gpt", "size": "tiny"},
            "data": {"sources": [{"uri": "file:///data/corpus.jsonl"}]},
            "training": {"globalBatchSize": 64, "microBatchSize": 8, "maxSteps": 1000},
            "replicas": {"min": min_nodes, "max": max_nodes},
            "resources": {"accelerator": {"type": "nvidia.com/gpu", "count": 8}},
            "template": {"nodeSelector": pool.selector},
            **spec,
        },
    }
