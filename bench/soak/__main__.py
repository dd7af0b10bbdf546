"""``python -m bench.soak``: see the package's docstring."""

import sys

from bench.soak.run import main

sys.exit(main())
