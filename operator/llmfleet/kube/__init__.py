"""The operator's view of the API server: an async client, watch-fed caches and typed views.

Reconcilers, routing and the autoscaler read the store (``store.Store``) and never list
the API server per event; the only module that sends requests is ``client``.
"""
