"""One lock for every Python environment the project builds (README, "Reproducible installs"):
uv.lock agrees with every pyproject, uv itself is pinned by hash, and every install step of the
Makefile and the Dockerfile goes through them."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from lockfile import ROOT, locked_versions, uv, uv_version


def test_the_lock_agrees_with_every_pyproject(tmp_path: Path) -> None:
    """`uv lock --check` resolves nothing when the lock satisfies the pyprojects; offline, and
    with an empty cache, so the answer does not depend on what this machine downloaded."""
    result = subprocess.run(
        [str(uv()), "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "UV_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, f"uv.lock is stale: run `make lock`\n{result.stderr}"


def test_the_lock_holds_each_environment_we_build() -> None:
    """The development group, the TorchX group and both images' projects are in it, and the
    Kubernetes client is kept out of TorchX's resolution (its urllib3 pin conflicts)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    assert {"pretrain-operator", "pretrain-trainer", "pretrain-devcluster", "torch",
            "torchx", "kopf", "pytest"} <= packages.keys()  # fmt: skip
    groups = packages["pretrain-workspace"]["dev-dependencies"]
    assert {"dev", "torchx"} <= groups.keys()
    urllib3 = sorted(p["version"] for p in lock["package"] if p["name"] == "urllib3")
    assert [v.split(".")[0] for v in urllib3] == ["1", "2"], urllib3


def test_each_image_gets_the_locked_torch_and_controller() -> None:
    trainer, operator = locked_versions("trainer"), locked_versions("operator")
    assert "torch" in trainer
    assert "kopf" not in trainer
    assert "kopf" in operator
    assert "torch" not in operator
    assert trainer["pydantic"] == operator["pydantic"]  # one lock: one version of what both hold


def test_uv_itself_is_pinned_by_hash_at_the_makefiles_version() -> None:
    pins = (ROOT / "hack/uv.txt").read_text()
    assert re.search(rf"^uv=={re.escape(uv_version())} ", pins, re.M), "run `make lock`"
    assert "--hash=sha256:" in pins


@pytest.mark.parametrize("path", ["Makefile", "Dockerfile"])
def test_every_install_step_goes_through_the_lock(path: str) -> None:
    """pip installs only hash-pinned requirements (exported from the lock, or uv's own pin) or
    our projects without their dependencies; the development venv is `uv sync --locked`."""
    text = (ROOT / path).read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    installs = [line for line in lines if re.search(r"\bpip install\b", line)]
    assert installs
    for line in installs:
        for command in re.split(r"&&|;", line):
            if "pip install" in command:
                assert "--require-hashes" in command or "--no-deps" in command, command
    assert "uv pip install" not in text
    if path == "Makefile":
        assert "sync --quiet --locked" in text


def test_the_image_context_holds_the_lock() -> None:
    """The Dockerfile copies the lock; .dockerignore must let it into the build context."""
    kept = (ROOT / ".dockerignore").read_text().splitlines()
    for name in ("pyproject.toml", "uv.lock", "hack/uv.txt"):
        assert f"!{name}" in kept, name
        assert name in (ROOT / "Dockerfile").read_text(), name
