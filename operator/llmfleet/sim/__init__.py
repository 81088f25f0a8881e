"""The simulated engine: an OpenAI-compatible server that behaves like a GPU server
under load (DESIGN.md section 5). ``llmfleet sim --help`` lists its flags; tests and
benches run it in-process with :func:`llmfleet.sim.server.start_sim`.

Only the config is re-exported here, so importing the package does not pull in
aiohttp.
"""

from llmfleet.sim.config import OutputLength, SimConfig

__all__ = ["OutputLength", "SimConfig"]
