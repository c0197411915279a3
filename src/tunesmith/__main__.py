"""`python -m tunesmith ...` (what torchrun starts: `torchrun ... -m tunesmith train CONFIG`)."""

import sys

from .cli.main import main

sys.exit(main())
