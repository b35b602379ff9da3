"""The TorchX component launches a tiny job to completion with `torchx run -s local_cwd`, in a
virtualenv of its own: uv.lock's `torchx` group (TorchX 0.7.0 pins urllib3<1.27, the operator's
Kubernetes client >=2.8)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lockfile import ROOT, uv
from pretrain_trainer.corpus import build_text_corpus


@pytest.fixture(scope="module")
def torchx_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("torchx") / "venv"
    subprocess.run(
        [str(uv()), "sync", "--quiet", "--frozen", "--only-group", "torchx", "--python", "python3"],
        cwd=ROOT, env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}, check=True, timeout=900,
    )  # fmt: skip
    return venv


def test_the_torchx_component_trains_a_job_to_completion(torchx_venv: Path, tmp_path: Path) -> None:
    python = str(torchx_venv / "bin/python")
    freeze = subprocess.run([str(uv()), "pip", "freeze", "--python", python],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    urllib3 = next(line for line in freeze.splitlines() if line.startswith("urllib3=="))
    assert urllib3.split("==")[1].startswith("1."), urllib3  # the pin that keeps it apart
    assert "kubernetes" not in freeze.lower()

    build_text_corpus(tmp_path / "pvc" / "corpus")
    job = {
        "apiVersion": "pretrain.dev/v1alpha1", "kind": "PretrainJob", "metadata": {"name": "tx"},
        "spec": {
            "objective": {"type": "CausalLM"}, "model": {"family": "gpt", "size": "tiny"},
            "tokenizer": {"type": "Byte"},
            "data": {"sources": [{"uri": "pvc://corpus/python-docs.jsonl"}], "sequenceLength": 32},
            "training": {"maxSteps": 3, "globalBatchSize": 4, "microBatchSize": 4,
                         "precision": "fp32"},
        },
    }  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(job))
    component = ROOT / "trainer/src/pretrain_trainer/torchx_component.py"
    result = subprocess.run(
        [str(torchx_venv / "bin/torchx"), "run", "-s", "local_cwd", f"{component}:pretrain",
         "--config", str(tmp_path / "job.json"), "--output", str(tmp_path / "out"),
         "--nproc_per_node", "2", "--rdzv_endpoint", "localhost:0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PRETRAIN_PVC_ROOT": str(tmp_path / "pvc"),
             "PATH": f"{torchx_venv / 'bin'}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3]
    assert {line["world_size"] for line in lines if "loss" in line} == {2}
    assert (tmp_path / "out/model/model.safetensors").exists()
