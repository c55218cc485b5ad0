"""`python -m pipelines INPUT OUTPUT --labels ...`: the same job as `zeroshot score`."""

import sys

from pipelines.cli import run

sys.exit(run())
