"""A small real corpus for demos and tests, built offline from what the machine has:

- python-docs.jsonl: the docstrings of the standard library (English prose about programming,
  about 1.4 MB; records {"text", "source"}), deterministic for a given Python version;
- digits/<label>/<n>.png: scikit-learn's bundled handwritten digits (1797 scans of 8x8 pixels,
  UCI), upscaled to 32x32, as an image folder;
- digits-captions.jsonl: each digit with a caption that says which digit it is (records
  {"image", "text"}), for image-text training.

`python -m pretrain_trainer.corpus DIR` writes them. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MIN_CHARACTERS = 200


def stdlib_docstrings() -> Iterator[dict[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if {"test", "tests", "idlelib", "site-packages", "lib2to3"} & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(relative.with_suffix("").parts)
        nodes: list[ast.AST] = [tree]
        definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        nodes += [n for n in ast.walk(tree) if isinstance(n, definitions)]
        for node in nodes:
            text = ast.get_docstring(node)  # type: ignore[arg-type]
            if text and len(text) >= MIN_CHARACTERS:
                name = getattr(node, "name", "")
                yield {"text": text, "source": f"{module}.{name}".rstrip(".")}


def build_text_corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "python-docs.jsonl"
    partial = target.with_suffix(".jsonl.partial")
    with partial.open("w") as handle:
        for record in stdlib_docstrings():
            handle.write(json.dumps(record) + "\n")
    partial.replace(target)  # readers never see a half-written corpus
    return target


NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = (
    "a handwritten digit {word}",
    "the number {digit}, written by hand",
    "a scan of a handwritten {word}",
    "a small grey image of the digit {word}",
)
DIGIT_SIZE = 32


def build_image_corpus(directory: Path) -> Path:
    """digits/ (an image folder) and digits-captions.jsonl from scikit-learn's digits."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = directory / "digits"
    captions = []
    for number, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        image = Image.fromarray(np.uint8(pixels * (255 / 16)), mode="L")
        image = image.resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BILINEAR)
        relative = Path("digits") / str(label) / f"{number:04d}.png"
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(directory / relative)
        caption = CAPTIONS[number % len(CAPTIONS)].format(word=NUMBERS[label], digit=label)
        captions.append({"image": str(relative), "text": caption})
    target = directory / "digits-captions.jsonl"
    partial = target.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(c) + "\n" for c in captions))
    partial.replace(target)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain_trainer.corpus", description=__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    path = build_text_corpus(args.directory)
    lines = sum(1 for _ in path.open())
    print(f"wrote {path}: {lines} documents, {path.stat().st_size / 1e6:.1f} MB")
    images = build_image_corpus(args.directory)
    print(f"wrote {images}: {sum(1 for _ in images.rglob('*.png'))} images, and their captions")
    from pretrain_trainer.labeled import build_labeled

    for name, count in build_labeled(args.directory).items():
        print(f"wrote {args.directory / name}: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
