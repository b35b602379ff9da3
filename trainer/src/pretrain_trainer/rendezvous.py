"""`python -m pretrain_trainer.rendezvous --port 29400`: the c10d store that torchrun agents
rendezvous through, in a pod of its own (the operator's `<job>-rdzv`). Living outside the
workers, it survives the loss of any of them, worker 0 included."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import timedelta

from torch._C._distributed_c10d import TCPStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain_trainer.rendezvous")
    parser.add_argument("--port", type=int, default=29400)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args(argv)
    store = TCPStore(args.host, args.port, is_master=True, wait_for_workers=False,
                     timeout=timedelta(hours=24))  # fmt: skip
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(f"rendezvous store listening on {args.host}:{store.port}", flush=True)
    stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
