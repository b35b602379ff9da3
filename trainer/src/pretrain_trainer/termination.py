"""What a worker leaves behind when it ends, for those that outlive it: the pod's termination
message (the kubelet keeps it in the pod's status after the pod's processes, and its metrics
endpoint, are gone) and the reason of a configuration error, which the node supervisor
(`pretrain_trainer.node`) acts on at once."""

from __future__ import annotations

import os
from pathlib import Path

TERMINATION_LOG = "PRETRAIN_TERMINATION_LOG"  # the pod's terminationMessagePath
# Set by the node supervisor for its workers: where a worker exiting 78 writes its reason.
CONFIGURATION_ERROR_FILE = "PRETRAIN_CONFIGURATION_ERROR_FILE"


def write_message(text: str) -> None:
    """Replace the termination message, where the pod has one. Written in place: the kubelet
    mounts a file there, which a rename could not replace."""
    path = os.environ.get(TERMINATION_LOG)
    if path:
        Path(path).write_text(text)


def record_configuration_error(reason: str) -> None:
    """Leave the one-line reason where the supervisor looks for it; written whole (a rename),
    so that it never reads half of it."""
    path = os.environ.get(CONFIGURATION_ERROR_FILE)
    if not path:
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_text(one_line(reason) + "\n")
    partial.replace(target)


def read_configuration_error(path: Path) -> str | None:
    """The reason a worker recorded, or None."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def one_line(text: str) -> str:
    return " ".join(text.split())
