"""uv.lock as the tests read it: what the lock says an image's environment holds."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devcluster.lock import exported, uv, uv_version

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["ROOT", "locked_versions", "uv", "uv_version"]


def locked_versions(image: str) -> dict[str, str]:
    """{distribution: version} that uv.lock gives the image's environment on this platform
    (our own projects excluded)."""
    versions: dict[str, str] = {}
    for line in exported(image, "--no-hashes", "--no-annotate").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            (pin,) = requirement.specifier
            versions[canonicalize_name(requirement.name)] = pin.version
    return versions
