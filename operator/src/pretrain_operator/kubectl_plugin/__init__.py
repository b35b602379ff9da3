"""`kubectl pretrain` (the `kubectl-pretrain` executable): status, logs, watch, suspend and resume
of PretrainJobs and FinetuneJobs on any cluster a kubeconfig reaches.

`render` and `history` are pure (text from plain dicts); `cluster` is the only module that talks
to the API server; `__main__` wires the commands.
"""
