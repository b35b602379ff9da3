"""`python -m devcluster.localnode --name N --state-dir DIR`: one local node, in the foreground."""

import sys

from devcluster.localnode.agent import main

sys.exit(main())
