"""Model URIs: ``hf://``, ``s3://``, ``gs://``, ``pvc://`` and ``oci://``.

The patterns are written in the regex subset that Python's ``re`` and RE2 (which
the API server's CEL ``matches()`` uses) read the same way, so the CRD rule and
:func:`parse_model_uri` accept exactly the same strings. Python callers must use
``re.fullmatch`` (Python's ``$`` also matches before a trailing newline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Hugging Face repo id: NAME or ORG/NAME.
HF_PATTERN = r"^hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"
S3_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$"
GS_PATTERN = r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?$"
# pvc://CLAIM[/PATH]; path segments may not start with "." (no "..", no escaping the mount).
PVC_PATTERN = r"^pvc://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*/?$"
# oci://[REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST]
OCI_PATTERN = (
    r"^oci://[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)

URI_PATTERNS: dict[str, str] = {
    "hf": HF_PATTERN,
    "s3": S3_PATTERN,
    "gs": GS_PATTERN,
    "pvc": PVC_PATTERN,
    "oci": OCI_PATTERN,
}

URI_FORMS = (
    "hf://ORG/NAME, s3://BUCKET/PATH, gs://BUCKET/PATH, pvc://CLAIM/PATH "
    "or oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]"
)


def uri_refusal(uri: str) -> str:
    """The message shown for a model URI that matches no supported form.

    Like the API server, which drops a messageExpression result with a line break
    in favour of the rule's static message, this does not quote such a URI.
    """
    if "\n" in uri or "\r" in uri:
        return f"not a supported model URI; use {URI_FORMS}"
    return f'"{uri}" is not a supported model URI; use {URI_FORMS}'


@dataclass(frozen=True)
class ModelUri:
    """A parsed model URI. ``location`` is everything after ``SCHEME://``."""

    scheme: str
    location: str

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.location}"

    @property
    def hf_repo(self) -> str:
        """The Hugging Face repo id (``hf://`` only)."""
        return self.location

    @property
    def pvc_claim(self) -> str:
        """The PersistentVolumeClaim name (``pvc://`` only)."""
        return self.location.split("/", 1)[0]

    @property
    def pvc_path(self) -> str:
        """The path inside the claim, without leading or trailing "/" (``pvc://`` only)."""
        parts = self.location.split("/", 1)
        return parts[1].strip("/") if len(parts) == 2 else ""

    @property
    def oci_reference(self) -> str:
        """The image reference (``oci://`` only)."""
        return self.location


def is_valid_model_uri(uri: str) -> bool:
    return any(re.fullmatch(p, uri) for p in URI_PATTERNS.values())


def parse_model_uri(uri: str) -> ModelUri:
    """Parse ``uri``; raise ValueError with :func:`uri_refusal` when it is not supported."""
    for scheme, pattern in URI_PATTERNS.items():
        if re.fullmatch(pattern, uri):
            return ModelUri(scheme=scheme, location=uri[len(scheme) + 3 :])
    raise ValueError(uri_refusal(uri))
