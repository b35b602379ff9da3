"""Labeled sets for fine-tuning, built offline from what the machine has, with honest labels:

- digits-labeled/{train,validation}.jsonl: scikit-learn's digits ({"image", "label"}, the label
  being the digit the UCI data set records), a small labeled budget for training and a fixed
  held-out set; digits-unlabeled/: every image outside the held-out set, without labels (for
  pre-training that never sees a validation image);
- docs-classify/{train,validation}.jsonl: standard library docstrings labelled by the family of
  the module they come from (gui, internet, concurrency, numbers); docs-unlabeled.jsonl: every
  docstring outside the held-out set;
- code-tags/{train,validation}.jsonl: lines of standard library source as Python tokens, each
  tagged by what Python's own tokenizer says it is (token classification);
- instructions/{train,validation}.jsonl: "which module family documents this?" prompts with the
  family as the response (instruction tuning, the loss on the response only).

Splits are fixed by a hash of each item, so they are the same on every machine with the same
Python and scikit-learn. `python -m pretrain_trainer.corpus DIR` writes them with the rest.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import keyword
import sysconfig
import token
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pretrain_trainer.corpus import DIGIT_SIZE, stdlib_docstrings

DIGITS_TRAIN = 200  # the labeled budget (20 per digit on average)
DIGITS_VALIDATION = 500
DOCS_TRAIN_PER_FAMILY = 60  # 240 labels in all
DOCS_VALIDATION_PER_FAMILY = 60
TAG_LINES_TRAIN, TAG_LINES_VALIDATION = 400, 200
FAMILIES: dict[str, tuple[str, ...]] = {
    "gui": ("tkinter", "turtle", "turtledemo", "idlelib", "curses"),
    "internet": ("email", "http", "urllib", "xmlrpc", "smtplib", "nntplib", "ftplib", "imaplib",
                 "poplib", "wsgiref", "xml", "mailbox", "socketserver", "html", "webbrowser"),
    "concurrency": ("asyncio", "threading", "concurrent", "multiprocessing", "queue",
                    "subprocess", "selectors", "sched", "_threading_local"),
    "numbers": ("_pydecimal", "decimal", "statistics", "fractions", "numbers", "random", "math",
                "cmath", "colorsys"),
}  # fmt: skip
TAGS = ("O", "KEYWORD", "BUILTIN", "NAME", "NUMBER", "STRING")  # O: operators and punctuation
INSTRUCTION = "Which part of the Python standard library does this documentation come from?\n"


def _rank(*parts: object) -> str:
    """A stable pseudo-random order key (the same on every machine)."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _write(path: Path, records: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    lines = [json.dumps(record) + "\n" for record in records]
    partial.write_text("".join(lines))
    partial.replace(path)  # readers never see a half-written file
    return len(lines)


def family_of(source: str) -> str | None:
    top = source.split(".")[0]
    return next((name for name, modules in FAMILIES.items() if top in modules), None)


def build_docs(directory: Path) -> dict[str, int]:
    """docs-classify/ (balanced training budget, held-out validation) and docs-unlabeled.jsonl."""
    by_family: dict[str, list[dict[str, str]]] = {name: [] for name in FAMILIES}
    everything = list(stdlib_docstrings())
    for record in everything:
        family = family_of(record["source"])
        if family:
            by_family[family].append(record)
    train: list[dict[str, str]] = []
    validation: list[dict[str, str]] = []
    for family, records in by_family.items():
        records.sort(key=lambda r: _rank("docs", r["source"], r["text"][:64]))
        chosen = records[: DOCS_VALIDATION_PER_FAMILY + DOCS_TRAIN_PER_FAMILY]
        for number, record in enumerate(chosen):
            split = validation if number < DOCS_VALIDATION_PER_FAMILY else train
            split.append({"text": record["text"], "label": family, "source": record["source"]})
    held_out = {r["text"] for r in validation}
    train.sort(key=lambda r: _rank("order", r["text"][:64]))
    counts = {
        "docs-classify/train": _write(directory / "docs-classify/train.jsonl", train),
        "docs-classify/validation": _write(directory / "docs-classify/validation.jsonl",
                                           validation),
        "docs-unlabeled": _write(directory / "docs-unlabeled.jsonl",
                                 (r for r in everything if r["text"] not in held_out)),
    }  # fmt: skip
    instructions = {
        name: ({"prompt": f"{INSTRUCTION}{r['text'][:400]}\nAnswer:", "response": f" {r['label']}"}
               for r in split)
        for name, split in (("train", train), ("validation", validation))
    }  # fmt: skip
    for name, prompts in instructions.items():
        counts[f"instructions/{name}"] = _write(directory / f"instructions/{name}.jsonl", prompts)
    return counts


def tag(kind: int, text: str) -> str:
    if kind == token.NAME:
        if keyword.iskeyword(text):
            return "KEYWORD"
        return "BUILTIN" if hasattr(builtins, text) else "NAME"
    if kind == token.NUMBER:
        return "NUMBER"
    if kind == token.STRING:
        return "STRING"
    return "O"


def tagged_lines(path: Path) -> Iterator[dict[str, list[str]]]:
    """Each logical line of a source file of 4 to 40 tokens, as tokens and their tags."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text("utf-8")).readline))
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, IndentationError):
        return
    words: list[str] = []
    tags: list[str] = []
    skipped = {token.NL, token.COMMENT, token.INDENT, token.DEDENT, token.ENDMARKER}
    for item in tokens:
        if item.type == token.NEWLINE:
            if 4 <= len(words) <= 40 and all(len(w) <= 40 and "\n" not in w for w in words):
                yield {"tokens": words, "tags": tags}
            words, tags = [], []
        elif item.type not in skipped:
            words.append(item.string)
            tags.append(tag(item.type, item.string))


def build_code_tags(directory: Path) -> dict[str, int]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("test"))
    lines = [line for path in files for line in tagged_lines(path)]
    lines.sort(key=lambda line: _rank("tags", " ".join(line["tokens"])))
    unique = list({" ".join(line["tokens"]): line for line in lines}.values())
    validation = unique[:TAG_LINES_VALIDATION]
    train = unique[TAG_LINES_VALIDATION : TAG_LINES_VALIDATION + TAG_LINES_TRAIN]
    return {
        "code-tags/train": _write(directory / "code-tags/train.jsonl", train),
        "code-tags/validation": _write(directory / "code-tags/validation.jsonl", validation),
    }


def build_digits(directory: Path) -> dict[str, int]:
    """Labeled splits over the digits corpus.build_image_corpus wrote, and the unlabeled rest."""
    from PIL import Image

    images = sorted((directory / "digits").rglob("*.png"))
    if not images:
        raise FileNotFoundError(f"{directory / 'digits'}: write the image corpus first")
    images.sort(key=lambda p: _rank("digits", p.name))
    records = [{"image": f"../{p.relative_to(directory)}", "label": int(p.parent.name)}
               for p in images]  # fmt: skip
    validation = records[:DIGITS_VALIDATION]
    train = records[DIGITS_VALIDATION : DIGITS_VALIDATION + DIGITS_TRAIN]
    unlabeled = directory / "digits-unlabeled" / "all"
    unlabeled.mkdir(parents=True, exist_ok=True)
    for path in images[DIGITS_VALIDATION:]:
        with Image.open(path) as image:
            assert image.size == (DIGIT_SIZE, DIGIT_SIZE)
            image.save(unlabeled / path.name)
    return {
        "digits-labeled/train": _write(directory / "digits-labeled/train.jsonl", train),
        "digits-labeled/validation": _write(directory / "digits-labeled/validation.jsonl",
                                            validation),
        "digits-unlabeled": len(images) - DIGITS_VALIDATION,
    }  # fmt: skip


def build_labeled(directory: Path) -> dict[str, int]:
    """Every labeled set (the image corpus must be there already); records per file."""
    return {**build_digits(directory), **build_docs(directory), **build_code_tags(directory)}
