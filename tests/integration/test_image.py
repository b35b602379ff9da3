"""The Dockerfile built for real with buildah (no Docker engine here), on a base image made with
debootstrap and tagged as the name the Dockerfile pins; the built images run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pretrain_operator import __version__

ROOT = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "overlay")]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed"),
]


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, check=check,
                          timeout=600)  # fmt: skip


def build(target: str) -> str:
    """`make image` for one target, forced onto buildah; the image's name."""
    built = subprocess.run(
        [str(ROOT / "hack" / "build-images.sh"), target], env={**os.environ, "BUILDAH": "1"},
        capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-5000:]
    return f"localhost/pretrain-operator/{target}:{__version__}"


@pytest.fixture
def container(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, object]]]:
    """A working container of the built image (param: the target) and the image's config."""
    image = build(request.param)
    config = json.loads(buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
    name = buildah("from", "--pull=false", image).stdout.strip()
    yield name, config
    buildah("rm", name, check=False)


def run(container: str, *command: str) -> subprocess.CompletedProcess[str]:
    return buildah("run", "--isolation", "chroot", container, "--", *command, check=False)


@pytest.mark.parametrize("container", ["operator"], indirect=True)
def test_the_operator_image_runs_and_prints_its_version(
    container: tuple[str, dict[str, object]],
) -> None:
    name, config = container
    entrypoint = config["Entrypoint"]
    assert isinstance(entrypoint, list)
    assert config["User"] == "1000:1000"
    printed = run(name, *entrypoint, "--version")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == f"pretrain-operator {__version__}"
    # The user, the controller's libraries, no torch (the operator stays small), the
    # debootstrapped Debian underneath.
    probe = (
        "id -u; python -c 'import kopf, kubernetes_asyncio, prometheus_client' && echo imports;"
        " python -c 'import torch' 2>/dev/null || echo no-torch; . /etc/os-release; echo $VERSION"
    )
    assert run(name, "sh", "-c", probe).stdout.split("\n")[:4] == [
        "1000", "imports", "no-torch", "12 (bookworm)"]  # fmt: skip


@pytest.mark.parametrize("container", ["trainer"], indirect=True)
def test_the_trainer_image_runs_torchrun_and_the_trainer(
    container: tuple[str, dict[str, object]],
) -> None:
    name, config = container
    assert config["User"] == "1000:1000"
    probe = (
        "torchrun --help >/dev/null && pretrain --help >/dev/null"
        " && python -c 'import torch, pretrain_trainer, pretrain_operator.api;"
        " print(torch.__version__)'"
    )
    checked = run(name, "sh", "-c", probe)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("2.")
