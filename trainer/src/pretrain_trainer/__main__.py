"""`python -m pretrain_trainer`: the same commands as `pretrain`."""

import sys

from pretrain_trainer.cli import main

sys.exit(main())
