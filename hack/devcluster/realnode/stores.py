"""The containerd stores (images and unpacked layers) that nodes take in turn. They are kept in
the project's cache, so the 6 GB trainer image is imported once per store, not once per run;
and a store that lacks an image another has just taken in becomes a copy of that one, so a fresh
machine imports it once in all.

A copy is cheap and shares no mutable file: containerd never writes a blob, an unpacked layer
or a file of its CRI plugin in place (new snapshots get new directories; status files are
replaced by rename), so those are hard links. Its bolt databases are written in place, so they
are copied, and only from a store whose containerd is stopped (a database is consistent at rest).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from devcluster import tools
from devcluster.realnode import processes
from devcluster.realnode.claims import Claims

STORE_COUNT = 8
# The stores a fresh import is copied to: the most real nodes one test runs at once (a job
# resized to 3 nodes).
SHARED_STORES = range(3)
DATABASE_SUFFIX = ".db"
INGEST = Path("io.containerd.content.v1.content") / "ingest"  # unfinished downloads: not copied


def claims() -> Claims:
    return Claims(tools.cache_dir() / "containerd" / "claims", "store", range(STORE_COUNT))


def root(number: int) -> Path:
    return tools.cache_dir() / "containerd" / f"store-{number}"


def _record_file(store: Path) -> Path:
    return store.with_name(f"{store.name}.images")


def recorded(store: Path) -> set[str]:
    """The images imported into `store`, as "name source-id" lines (beside the store, which is
    containerd's alone)."""
    try:
        return set(_record_file(store).read_text().splitlines())
    except FileNotFoundError:
        return set()


def record(store: Path, name: str, source_id: str) -> None:
    lines = {line for line in recorded(store) if not line.startswith(f"{name} ")}
    _record_file(store).write_text(
        "".join(f"{line}\n" for line in sorted(lines | {f"{name} {source_id}"}))
    )


def remove(store: Path) -> None:
    processes.unmount_under(store)  # overlay mounts a killed node left
    _record_file(store).unlink(missing_ok=True)
    shutil.rmtree(store, ignore_errors=True)


def copy(source: Path, target: Path) -> None:
    """Make `target` a copy of `source`; neither may be in use. Built beside the target and
    renamed into place, so an interrupted copy is never taken for a store."""
    staging = target.with_name(f".{target.name}-copying")
    remove(staging)
    subprocess.run(["cp", "-a", "--link", str(source), str(staging)], check=True,
                   capture_output=True)  # fmt: skip
    shutil.rmtree(staging / INGEST, ignore_errors=True)
    # Each plugin keeps its database at its directory's top (io.containerd.metadata.v1.bolt/
    # meta.db, the snapshotter's metadata.db); deeper files belong to images.
    for database in staging.glob(f"*/*{DATABASE_SUFFIX}"):
        # A copy in place of the link: the source's database stays the source's alone.
        unlinked = database.with_name(database.name + ".copying")
        shutil.copy2(source / database.relative_to(staging), unlinked)
        unlinked.replace(database)
    remove(target)
    staging.rename(target)
    shutil.copy2(_record_file(source), _record_file(target))


def lacking(images: set[str], candidates: range, exclude: int) -> list[int]:
    """The stores among `candidates` (not `exclude`) that have not recorded all of `images`."""
    return [n for n in candidates if n != exclude and not images <= recorded(root(n))]
