"""`make image` from the tests: one build per target under the tests' own tag, shared by the
image tests and the real nodes that run the trainer image. The image is kept, so the next run's
build is a cache hit on every layer, and a build whose sources changed frees the image it
replaces (hack/build-images.sh): at most one test image of each target stays."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORAGE_DRIVER = os.environ.get("STORAGE_DRIVER", "overlay")
BUILDAH = ["buildah", "--storage-driver", STORAGE_DRIVER]
# The tests' own tag, so `make image`'s images are left alone (another checkout's suite running
# beside this one can be given a tag of its own).
TAG = os.environ.get("PRETRAIN_TEST_IMAGE_TAG", "test")
# Building the trainer holds its 6 GB layer three times at its peak: the container's writable
# layer, the layer's tar while it is committed, the committed layer.
FREE_SPACE_NEEDED = {"operator": 2 << 30, "trainer": 20 << 30}


def image_name(target: str) -> str:
    """buildah's name for the tests' image, which is also what the real nodes import it as."""
    return f"localhost/pretrain-operator/{target}:{TAG}"


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, check=check,
                          timeout=600)  # fmt: skip


def skip_unless_disk_for(target: str) -> None:
    """Skip, saying why, where the disk cannot hold the build (an ENOSPC error deep in a
    commit tells a developer much less)."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (make debian)")
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
    return image_name(target)


if __name__ == "__main__":  # `make test`: the image built before pytest, while Go compiles
    import sys

    try:
        print(f"built {build(sys.argv[1])}")
    except pytest.skip.Exception as skipped:
        print(f"not built ({skipped.msg}); the tests that need it say so")
