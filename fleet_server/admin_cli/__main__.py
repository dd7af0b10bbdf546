"""``python -m fleet_server.admin_cli``: the same as ``edgefleet``."""

from __future__ import annotations

import sys

from fleet_server.admin_cli import main

sys.exit(main())
