"""A small real corpus for demos and tests, built offline from what every machine with Python has:
the docstrings of the standard library (English prose about programming, about 1-2 MB).

`python -m pretrain_trainer.corpus DIR` writes DIR/python-docs.jsonl (records {"text", "source"}),
deterministic for a given Python version. Nothing is downloaded.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain_trainer.corpus", description=__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    path = build_text_corpus(args.directory)
    lines = sum(1 for _ in path.open())
    print(f"wrote {path}: {lines} documents, {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
