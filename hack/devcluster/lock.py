"""uv.lock and the uv that reads it: the share of the lock each image's environment holds, for
the tests that check an image against it and for a benchmark that runs the operator as its image
would."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from devcluster.tools import HACK_DIR, cache_dir

ROOT = HACK_DIR.parent
# uv export's selection of each image's share of the lock (as the Dockerfile's `lock` stage).
IMAGE_PACKAGES = {
    "operator": ["--package", "pretrain-operator", "--extra", "controller"],
    "trainer": ["--package", "pretrain-trainer", "--extra", "s3", "--extra", "gcs"],
}


def uv_version() -> str:
    """The uv that `make venv` installs (the Makefile's UV_VERSION)."""
    found = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "the Makefile pins UV_VERSION"
    return found[1]


def uv() -> Path:
    binary = cache_dir() / f"uv-{uv_version()}" / "bin" / "uv"
    assert binary.exists(), "uv is installed by `make venv`"
    return binary


def exported(image: str, *flags: str) -> str:
    """The image's requirements as `uv export` writes them (our own projects excluded)."""
    return subprocess.run(
        [str(uv()), "export", "--quiet", "--frozen", "--no-default-groups", "--no-emit-workspace",
         "--no-header", *flags, *IMAGE_PACKAGES[image]],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
