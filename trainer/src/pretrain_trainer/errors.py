"""Exit codes the operator acts on, and the error that means "the spec is wrong"."""

from __future__ import annotations

from pretrain_operator.naming import EXIT_BAD_CONFIGURATION, EXIT_TERMINATED

EXIT_SUCCESS = 0
EXIT_RETRYABLE = 1  # anything else: I/O, a lost peer, out of memory... worth another try


class ConfigurationError(ValueError):
    """The job cannot run as specified; the message names the field. Exit code 78."""


__all__ = [
    "EXIT_BAD_CONFIGURATION",
    "EXIT_RETRYABLE",
    "EXIT_SUCCESS",
    "EXIT_TERMINATED",
    "ConfigurationError",
]
