"""`make bench` (`python -m bench [NAME ...] [--quick]`): run the benchmarks, print each one's
ratio against its baseline, and write every figure to .bench/results.json.

A benchmark is an entry of BENCHMARKS: a function from the `--quick` flag to a JSON-able report
that holds a `summary` line. Adding one is adding an entry (and its section in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".bench" / "results.json"

Report = dict[str, Any]


def trainer_cpu(quick: bool) -> Report:
    from bench import trainer_throughput as bench

    settings = bench.Settings(steps=4, warmup=2, runs=1) if quick else bench.Settings()
    corpus = bench.ensure_corpus(ROOT / ".bench" / "corpus")
    report = bench.compare(["gpt"] if quick else ["gpt", "bert"], settings, corpus)
    report["summary"] = "; ".join(
        f"{model} ours/plain {row['ratio']:.3f} wall, {row['cpu_ratio']:.3f} per CPU second "
        f"({row['ours_tokens_per_second']:,.0f} vs {row['plain_tokens_per_second']:,.0f} tokens/s)"
        for model, row in report["models"].items()
    )
    return report


def operator_scale(quick: bool) -> Report:
    from dataclasses import asdict

    from bench import operator_scale as bench

    sizes = [2] if quick else [50, 200]
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as work:
        # A minute of steady state: status writes and looks while nothing changes.
        results = bench.run(sizes, ["ours", "kubeflow", "floor"], Path(work),
                            steady=3.0 if quick else 60.0)  # fmt: skip
    ratios = bench.ratios(results)
    summary = "; ".join(
        f"N={n}: " + ", ".join(f"{name} {value:.2f}" for name, value in row.items())
        for n, row in ratios.items()
    )
    return {"results": [asdict(r) for r in results], "ratios": ratios, "summary": summary}


def checkpointing(quick: bool) -> Report:
    from bench import checkpointing as bench

    return bench.measure(width=512, layers=2, runs=1) if quick else bench.measure()


def checkpoint_s3(quick: bool) -> Report:
    from bench import checkpoint_s3 as bench

    return bench.measure(width=512, layers=2, runs=1) if quick else bench.measure()


def recovery(quick: bool) -> Report:
    import os

    from bench import recovery as bench

    if os.geteuid() != 0:
        return {"summary": "not measured: needs root (real nodes run containerd and a kubelet)"}
    return bench.measure(runs=1 if quick else 3)


def data(quick: bool) -> Report:
    from bench import data as bench

    return bench.measure(quick)


def not_yet(issue_item: str) -> Callable[[bool], Report]:
    def report(quick: bool) -> Report:
        return {"summary": f"not measured yet ({issue_item}; see BENCHMARKS.md)"}

    return report


BENCHMARKS: dict[str, Callable[[bool], Report]] = {
    "trainer-cpu": trainer_cpu,
    "trainer-gpu": not_yet("needs a GPU; none on the development machines"),
    "operator-scale": operator_scale,
    "recovery": recovery,
    "checkpointing": checkpointing,
    "checkpoint-s3": checkpoint_s3,
    "data": data,
}


def machine() -> dict[str, Any]:
    import os

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"which to run (default all): {', '.join(BENCHMARKS)}")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="one tiny iteration of each: a smoke test only"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"no benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    reports: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%FT%TZ", time.gmtime()),
    }
    for name in args.names or list(BENCHMARKS):
        print(f"{name}:", file=sys.stderr, flush=True)
        started = time.perf_counter()
        reports[name] = BENCHMARKS[name](args.quick)
        reports[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {reports[name]['summary']}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(reports, indent=2) + "\n")
    print(f"figures in {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
