"""`python -m deltanet ...` is the `deltanet` command (needed for `torchrun -m deltanet`)."""

import sys

from deltanet.cli import main

sys.exit(main())
