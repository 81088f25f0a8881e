"""llmfleet: a Kubernetes operator for self-hosted LLM inference fleets."""

__version__ = "0.1.0"
