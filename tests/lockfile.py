"""uv.lock as the tests read it: the uv that `make venv` installed (the Makefile's UV_VERSION),
and what the lock says an image's environment holds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devcluster.tools import cache_dir

ROOT = Path(__file__).resolve().parents[1]
# uv export's selection of each image's share of the lock (as the Dockerfile's `lock` stage).
IMAGE_PACKAGES = {
    "operator": ["--package", "pretrain-operator", "--extra", "controller"],
    "trainer": ["--package", "pretrain-trainer", "--extra", "s3", "--extra", "gcs"],
}


def uv_version() -> str:
    found = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "the Makefile pins UV_VERSION"
    return found[1]


def uv() -> Path:
    binary = cache_dir() / f"uv-{uv_version()}" / "bin" / "uv"
    assert binary.exists(), "uv is installed by `make venv`"
    return binary


def locked_versions(image: str) -> dict[str, str]:
    """{distribution: version} that uv.lock gives the image's environment on this platform
    (our own projects excluded)."""
    exported = subprocess.run(
        [str(uv()), "export", "--quiet", "--frozen", "--no-default-groups", "--no-emit-workspace",
         "--no-hashes", "--no-header", "--no-annotate", *IMAGE_PACKAGES[image]],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    versions: dict[str, str] = {}
    for line in exported.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            (pin,) = requirement.specifier
            versions[canonicalize_name(requirement.name)] = pin.version
    return versions
