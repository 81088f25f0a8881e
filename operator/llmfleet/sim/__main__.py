"""``python -m llmfleet.sim`` runs a sim replica (same as ``llmfleet sim``)."""

import sys

from llmfleet.sim.server import main

sys.exit(main())
