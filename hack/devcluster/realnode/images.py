"""Images on the real nodes without a registry: the pods' sandbox ("pause") image written as an
OCI archive from the pause binary, `make image`'s images exported from buildah's storage, and both
imported into a node's containerd once (an image whose buildah ID is already there is skipped).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from devcluster.realnode.containerd import CRI_NAMESPACE, ContainerdPaths

IMAGE_ID_LABEL = "pretrain.dev/source-id"  # what the image was made from: skip it when unchanged
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class ImageError(RuntimeError):
    """An export or import failed; the message carries the command's stderr."""


def _blob(archive: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest.removeprefix('sha256:')}")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
    return digest, len(data)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def single_binary_archive(binary: Path, name: str, destination: Path) -> None:
    """An OCI archive of an image holding only `binary` at /, as its entrypoint."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        info = tarfile.TarInfo(binary.name)
        data = binary.read_bytes()
        info.size, info.mode = len(data), 0o755
        layer.addfile(info, io.BytesIO(data))
    layer_bytes = layer_buffer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [f"/{binary.name}"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(destination, mode="w", format=tarfile.PAX_FORMAT) as archive:
        layout = _json({"imageLayoutVersion": "1.0.0"})
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        archive.addfile(info, io.BytesIO(layout))
        config_digest, config_size = _blob(archive, _json(image_config))
        layer_digest, layer_size = _blob(archive, layer_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        }  # fmt: skip
        manifest_digest, manifest_size = _blob(archive, _json(manifest))
        index = {
            "schemaVersion": 2,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest,
                           "size": manifest_size,
                           "annotations": {"io.containerd.image.name": name,
                                           "org.opencontainers.image.ref.name": name}}],
        }  # fmt: skip
        index_bytes = _json(index)
        info = tarfile.TarInfo("index.json")
        info.size = len(index_bytes)
        archive.addfile(info, io.BytesIO(index_bytes))


def file_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _ctr(paths: ContainerdPaths, *args: str, timeout: float = 900) -> str:
    result = subprocess.run(
        ["ctr", "--address", str(paths.socket), "--namespace", CRI_NAMESPACE, *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if result.returncode != 0:
        raise ImageError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def present(paths: ContainerdPaths, name: str, source_id: str) -> bool:
    """Whether the node has `name`, imported from the source `source_id`."""
    listing = _ctr(paths, "images", "list", f"name=={name}")
    return f"{IMAGE_ID_LABEL}={source_id}" in listing


def import_archive(paths: ContainerdPaths, archive: Path, name: str, source_id: str) -> None:
    _ctr(paths, "images", "import", str(archive))
    _ctr(paths, "images", "label", name, f"{IMAGE_ID_LABEL}={source_id}")


def buildah_image_id(image: str, storage_driver: str) -> str:
    result = subprocess.run(
        ["buildah", "--storage-driver", storage_driver, "inspect", "--type", "image",
         "--format", "{{.FromImageID}}", image],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise ImageError(
            f"image {image} is not in buildah's storage (build it with `make image`): "
            f"{result.stderr.strip()}"
        )
    return result.stdout.strip()[:16]


def in_buildah(image: str, storage_driver: str) -> bool:
    try:
        buildah_image_id(image, storage_driver)
    except ImageError:
        return False
    return True


def export_buildah_image(image: str, name: str, storage_driver: str, directory: Path) -> Path:
    """`image` from buildah's storage as an OCI archive naming it `name` (a temporary file in
    `directory`: the trainer's is 6 GB, so the caller deletes it once imported)."""
    handle, path = tempfile.mkstemp(prefix="image-", suffix=".tar", dir=directory)
    os.close(handle)
    Path(path).unlink()  # buildah refuses to write over a file
    result = subprocess.run(
        # Uncompressed: gzip of 6 GB would cost minutes of both cores, twice (push, import).
        ["buildah", "--storage-driver", storage_driver, "push", "--quiet",
         "--disable-compression", image,
         f"oci-archive:{path}:{name}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise ImageError(f"buildah push {image}: {result.stderr.strip()}")
    return Path(path)
