"""`python -m devcluster.localnode.sandbox SPEC.json`: the first process of a container, started
inside the pod's network namespace and a private mount and UTS namespace. It mounts the pod's
volumes and hosts file, sets the pod's hostname, and becomes the container's command (exec), so
its pid is the container's.

Sources are opened before anything is mounted and mounted through /proc/self/fd: a volume
mounted at /tmp must not hide a later volume whose directory lives under /tmp on the host.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from pathlib import Path

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    if (
        _libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None
        )
        != 0
    ):
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")


def _mount_point(target: Path, is_file: bool) -> None:
    """Create the mount point (on the host file system: directories are not namespaced)."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_file:
        target.touch()
    else:
        target.mkdir(parents=True, exist_ok=True)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    mounts = list(spec["mounts"])
    for name in ("hosts", "resolv.conf"):
        if spec.get(name):
            mounts.append({"source": spec[name], "target": f"/etc/{name}", "read_only": True})
    targets = [m["target"] for m in mounts]
    # The checkout, where a volume would cover it: bound back over the volume afterwards.
    covered = [path for path in spec.get("keep", [])
               if any(Path(path).is_relative_to(target) for target in targets)]  # fmt: skip
    mounts += [{"source": path, "target": path, "read_only": True} for path in covered]
    sources = [os.open(m["source"], os.O_PATH) if m["source"] else -1 for m in mounts]
    for mount, fd in zip(mounts, sources, strict=True):
        target = Path(mount["target"])
        if fd < 0:
            _mount_point(target, is_file=False)
            _mount("tmpfs", str(target), "tmpfs", 0)
            continue
        _mount_point(target, is_file=not Path(f"/proc/self/fd/{fd}").is_dir())
        _mount(f"/proc/self/fd/{fd}", str(target), None, MS_BIND | MS_REC)
        if mount["read_only"]:
            _mount("none", str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    socket.sethostname(spec["hostname"])
    os.chdir(spec["working_dir"] or "/")
    argv_, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv_[0], argv_, env)
    except OSError as error:  # the kubelet's StartError: exit code 128
        print(f"local node: cannot run {argv_[0]!r}: {error}", file=sys.stderr)
        return 128


if __name__ == "__main__":
    sys.exit(main(sys.argv))
