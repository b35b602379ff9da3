"""pretrain-trainer: the pre-training objectives, model families and training loop."""

__version__ = "0.1.0"
