"""DSSE-style signing envelope: what exactly gets signed.

Signatures never cover the payload alone but its pre-authentication encoding (PAE), which binds
the payload type so that bytes signed as one kind of document cannot be replayed as another.
This follows the DSSE v1 definition::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where LEN is the ASCII decimal byte length and SP a single space.
"""

from __future__ import annotations

import hashlib

__all__ = ["KEYLIST_PAYLOAD_TYPE", "MANIFEST_PAYLOAD_TYPE", "keyid", "pae"]

MANIFEST_PAYLOAD_TYPE = "application/vnd.edgefleet.manifest+protobuf"
KEYLIST_PAYLOAD_TYPE = "application/vnd.edgefleet.keylist+protobuf"


def keyid(public_key: bytes) -> str:
    """The id of a raw public key: the first 16 hex digits of its sha256. A hint, not a proof."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return the DSSE v1 pre-authentication encoding of ``payload`` typed ``payload_type``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)
