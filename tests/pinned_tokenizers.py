"""Tokenizers the training tests pin through `tokenizer.uri`, so that their figures are the same
in every run. Hugging Face's WordPiece trainer breaks ties between equally frequent merges in
hash-map order, which differs from process to process: trained at test time, the vocabulary (and
every loss and accuracy after it) would differ from run to run (README, "A note on
reproducibility"). Each file in tests/assets/tokenizers/ is what the job whose spec names it
trains on the bundled corpus, made once and committed:

    .venv/bin/python tests/pinned_tokenizers.py

Tests copy them into the corpus claim (`pvc://corpus/tokenizers/NAME.json`), which pods and
`pretrain run` both read."""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets" / "tokenizers"
CLAIM_DIRECTORY = "tokenizers"  # under the corpus claim


def tokenizer_name(spec: dict[str, Any]) -> str:
    """The pinned tokenizer of a PretrainJob spec: its first source, tokenizer type and size."""
    source = Path(spec["data"]["sources"][0]["uri"]).name.split(".")[0]
    tokenizer = spec["tokenizer"]
    return f"{source}-{tokenizer['type'].lower()}-{tokenizer['vocabSize']}"


def pinned(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (a PretrainJob's) with tokenizer.uri set to its pinned tokenizer in the claim."""
    name = f"{tokenizer_name(spec)}.json"
    assert (ASSETS / name).is_file(), f"no pinned tokenizer {name}: run {__file__}"
    changed = copy.deepcopy(spec)
    changed["tokenizer"]["uri"] = f"pvc://corpus/{CLAIM_DIRECTORY}/{name}"
    return changed


def pinned_where_trained(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with its tokenizer pinned where the job would train a WordPiece or Unigram one
    (byte-level BPE and Byte tokenizers are the same in every process)."""
    tokenizer = spec.get("tokenizer", {})
    if tokenizer.get("type") in ("WordPiece", "Unigram") and not tokenizer.get("uri"):
        return pinned(spec)
    return spec


def install(corpus: Path) -> None:
    """Put every pinned tokenizer into a corpus claim's directory."""
    shutil.copytree(ASSETS, corpus / CLAIM_DIRECTORY, dirs_exist_ok=True)


def specs() -> list[dict[str, Any]]:
    """Every spec whose tokenizer the tests pin: the text examples that train one, and the
    masked-LM pre-training of the fine-tuning tests and bench.transfer."""
    from bench import transfer

    examples = [yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())["spec"]
                for name in ("bert-tiny-cpu", "electra-tiny-cpu", "t5-tiny-cpu", "clip-tiny-cpu",
                             "demo-bert-tiny")]  # fmt: skip
    return [*examples, transfer.pretraining(transfer.TASKS["docs"], 1)]


def main() -> None:
    """Train each spec's tokenizer as its job would, on the bundled corpus; write the files."""
    import torch

    from pretrain_operator.api import PretrainJobSpec
    from pretrain_trainer.corpus import build_image_corpus, build_text_corpus
    from pretrain_trainer.distributed import Runtime
    from pretrain_trainer.labeled import build_labeled
    from pretrain_trainer.train import prepare_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        for build in (build_text_corpus, build_image_corpus, build_labeled):
            build(Path(scratch) / "corpus")
        os.environ["PRETRAIN_PVC_ROOT"] = scratch
        ASSETS.mkdir(parents=True, exist_ok=True)
        for spec in specs():
            output = Path(scratch) / tokenizer_name(spec)
            job = PretrainJobSpec.model_validate(spec)
            prepare_tokenizer(job, output, Runtime(device=torch.device("cpu")))
            shutil.copyfile(output / "tokenizer.json", ASSETS / f"{tokenizer_name(spec)}.json")
            print(f"{ASSETS / tokenizer_name(spec)}.json", file=sys.stderr)


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    main()
