"""`python -m enforcer.cli`: the lab starts the daemon this way inside a namespace."""

import sys

from .main import main

sys.exit(main())
