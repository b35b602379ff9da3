"""Numbered resources of this machine that processes take turns holding (node slots, image
stores): a file per number holding the holder's pid, under a lock. A number whose holder died
is free again, so a killed run leaks nothing."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ClaimError(RuntimeError):
    """Every number is held by a live process."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class Claims:
    directory: Path
    prefix: str
    numbers: range

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"{self.prefix}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _file(self, number: int) -> Path:
        return self.directory / f"{self.prefix}-{number}"

    def _holder(self, number: int) -> int:
        try:
            return int(self._file(number).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return 0

    def take(self, owner: str) -> int:
        """The lowest number no live process holds, now held by this process. `owner` is
        written beside the pid for whoever wonders what holds it."""
        with self._locked():
            for number in self.numbers:
                pid = self._holder(number)
                if pid and _alive(pid):
                    continue
                self._file(number).write_text(f"{os.getpid()} {owner}\n")
                return number
        raise ClaimError(f"all {len(self.numbers)} {self.prefix} numbers are held")

    def take_number(self, number: int, owner: str) -> bool:
        """Hold `number` if no live process (this one included) does; whether it is now held."""
        with self._locked():
            pid = self._holder(number)
            if pid and _alive(pid):
                return False
            self._file(number).write_text(f"{os.getpid()} {owner}\n")
            return True

    def hand_to(self, number: int, pid: int, owner: str) -> None:
        """Make `pid` (a long-lived process) the holder, so the number stays taken after the
        process that took it exits (`make cluster-up`)."""
        with self._locked():
            self._file(number).write_text(f"{pid} {owner}\n")

    def give_back(self, number: int) -> None:
        with self._locked():
            self._file(number).unlink(missing_ok=True)
