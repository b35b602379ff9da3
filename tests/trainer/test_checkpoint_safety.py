"""Checkpoints are atomic: a save killed half-way leaves the previous checkpoint as the one a
resume uses, and a background save holds the state of the step it was asked for while training
goes on."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

from pretrain_trainer.checkpoint import CheckpointWriter, latest, restore
from pretrain_trainer.distributed import Runtime

SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from torch import nn
    from pretrain_trainer.checkpoint import save
    from pretrain_trainer.distributed import Runtime

    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)])  # 100 MB of weights
    optimizer = torch.optim.AdamW(model.parameters())
    root = Path(sys.argv[1])
    for step in (1, 2, 3):
        print(f"saving {step}", flush=True)
        save(root, step, step * 10, model, optimizer, Runtime(), keep=5)
""")


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_in_use(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(root)], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    assert saver.stdout is not None
    while saver.stdout.readline().strip() != "saving 3":
        assert saver.poll() is None, "the saver died before its third save"
    deadline = time.monotonic() + 60
    while not any(path.is_file() for path in root.glob(".partial-step-000000003-*/*")):
        assert time.monotonic() < deadline, "the third save never started writing"
        time.sleep(0.002)
    saver.send_signal(signal.SIGKILL)  # mid-write: shards on disk, no manifest, no rename
    saver.wait()

    assert list(root.glob(".partial-step-000000003-*")), "the kill came after the commit"
    assert not (root / "step-000000003").exists()
    found = latest(root)
    assert found is not None
    assert found[0].name == "step-000000002"
    assert found[1]["data_position"] == 20


def test_a_background_save_holds_the_state_of_its_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(256, 256)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 256)).sum().backward()
    optimizer.step()
    at_step_1 = {name: value.detach().clone() for name, value in model.state_dict().items()}
    committed: list[int] = []
    writer = CheckpointWriter(tmp_path, Runtime(), keep=2, background=True,
                              on_commit=lambda step, _: committed.append(step))  # fmt: skip
    writer.save(1, 10, model, optimizer)
    with torch.no_grad():  # training goes on while the checkpoint is written
        model.weight.add_(1.0)
    writer.close()

    assert committed == [1]
    fresh = nn.Linear(256, 256)
    found = latest(tmp_path)
    assert found is not None
    restored = restore(found, fresh, torch.optim.AdamW(fresh.parameters()))
    assert restored.step == 1
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, at_step_1[name]), name
