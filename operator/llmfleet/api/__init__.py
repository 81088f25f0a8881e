"""The llmfleet API: resource models (:mod:`llmfleet.api.models`), their CEL rules
(:mod:`llmfleet.api.cel`), model URIs (:mod:`llmfleet.api.uri`), conditions
(:mod:`llmfleet.api.conditions`) and CRD generation (:mod:`llmfleet.api.crd`).

Import the submodules directly; this package imports nothing, so the engines
package can use :mod:`llmfleet.api.uri` without an import cycle.
"""
