"""The llmfleet API: resource models (:mod:`llmfleet.api.models`), their CEL rules
(:mod:`llmfleet.api.cel`), model URIs (:mod:`llmfleet.api.uri`), what each engine kind
supports (:mod:`llmfleet.api.support`), the OpenAI error body (:mod:`llmfleet.api.openai`)
and CRD generation (:mod:`llmfleet.api.crd`).

Import the submodules directly; this package imports nothing, so the engines and the
simulator can use its plain modules without importing the models.
"""
