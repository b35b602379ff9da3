"""The Dockerfile built for real with buildah (no Docker engine here), on a base image made with
debootstrap and tagged as the name the Dockerfile pins; the built images run. The tests build
under a tag of their own (tests/image_builds.py), so `make image`'s images are left alone."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from packaging.utils import canonicalize_name

from image_builds import build, buildah
from lockfile import locked_versions
from pretrain_operator import __version__

pytestmark = [pytest.mark.slow]


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
        "id -u; python -c 'import kopf, prometheus_client, pretrain_operator.kube' && echo imports;"
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
