"""pretrain-operator: PretrainJob and FinetuneJob custom resources reconciled by kopf."""

__version__ = "0.1.0"

API_GROUP = "pretrain.dev"
API_VERSION = "v1alpha1"
