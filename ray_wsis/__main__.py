"""`python -m ray_wsis ...` is `ray-wsis ...` (also the entrypoint of `ray job submit`)."""

import sys

from ray_wsis.cli import main

sys.exit(main())
