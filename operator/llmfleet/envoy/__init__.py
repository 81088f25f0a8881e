"""Route table → Envoy: xDS resources (pure), the ADS server, Envoy's bootstrap.

- :mod:`llmfleet.envoy.resources` — ``build_resources(table, listener_port=...)``
- :mod:`llmfleet.envoy.lua` — the upstream filter that rewrites ``model`` per backend
- :mod:`llmfleet.envoy.xds` — ``XdsServer`` (asyncio)
- :mod:`llmfleet.envoy.bootstrap` — ``bootstrap(...)`` and ``llmfleet envoy-bootstrap``
"""
