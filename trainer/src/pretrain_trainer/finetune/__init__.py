"""FinetuneJob: adapt a pre-trained model to a labeled task. One module per concern: the base
(base.py), task heads (heads.py), losses and batches (tasks.py), labeled data (data.py), LoRA
(lora.py), evaluation scores (scores.py), the export (export.py) and the loop (loop.py)."""
