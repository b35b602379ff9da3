"""The Dockerfile built for real with buildah (no Docker engine here), on a base image made with
debootstrap and tagged as the name the Dockerfile pins; the built images run. The tests build
under a tag of their own, so `make image`'s images are left alone. They keep that image: the next
run's build is then a cache hit on every layer (seconds instead of minutes of installing torch),
and a build whose sources changed frees the image it replaces (hack/build-images.sh), so at most
one test image of each target stays."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from lockfile import locked_versions
from pretrain_operator import __version__

ROOT = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "overlay")]
TAG = "test"
# Building the trainer holds its 6 GB layer three times at its peak: the container's writable
# layer, the layer's tar while it is committed, the committed layer.
FREE_SPACE_NEEDED = {"operator": 2 << 30, "trainer": 20 << 30}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed"),
]


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, check=check,
                          timeout=600)  # fmt: skip


def skip_unless_disk_for(target: str) -> None:
    """Skip, saying why, where the disk cannot hold the build (an ENOSPC error deep in a
    commit tells a developer much less)."""
    storage = json.loads(buildah("info").stdout)["store"]["GraphRoot"]
    for where in {storage, os.environ.get("TMPDIR", "/var/tmp")}:
        free = shutil.disk_usage(where).free
        if free < FREE_SPACE_NEEDED[target]:
            pytest.skip(f"building the {target} image needs {FREE_SPACE_NEEDED[target] >> 30} GiB "
                        f"free at {where}; {free >> 30} GiB are")  # fmt: skip


def build(target: str) -> str:
    """`make image` for one target, forced onto buildah, under the tests' tag; the image's name."""
    skip_unless_disk_for(target)
    built = subprocess.run(
        [str(ROOT / "hack" / "build-images.sh"), target],
        env={**os.environ, "BUILDAH": "1", "IMAGE_TAG": TAG},
        capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-5000:]
    return f"localhost/pretrain-operator/{target}:{TAG}"


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


INSTALLED = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


def assert_installed_from_the_lock(container: str, image: str) -> None:
    """The image's environment holds exactly uv.lock's versions, and besides them only our own
    two projects."""
    printed = run(container, "python", "-c", INSTALLED)
    assert printed.returncode == 0, printed.stderr
    installed: dict[str, str] = {
        canonicalize_name(k): v for k, v in json.loads(printed.stdout).items()
    }
    locked = locked_versions(image)
    assert {name: installed.get(name) for name in locked} == locked
    assert installed.keys() - locked.keys() <= {"pretrain-operator", "pretrain-trainer"}


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
    assert_installed_from_the_lock(name, "operator")


@pytest.mark.parametrize("container", ["trainer"], indirect=True)
def test_the_trainer_image_runs_torchrun_and_the_trainer(
    container: tuple[str, dict[str, object]],
) -> None:
    name, config = container
    assert config["User"] == "1000:1000"
    probe = (
        "torchrun --help >/dev/null && pretrain --help >/dev/null"
        " && python -m pretrain_trainer.node --help >/dev/null"
        " && python -c 'import torch, pretrain_trainer, pretrain_operator.api;"
        " print(torch.__version__)'"
    )
    checked = run(name, "sh", "-c", probe)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("2.")
    assert_installed_from_the_lock(name, "trainer")
