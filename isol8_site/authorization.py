"""The key a request presents in its Authorization header: one parser for every route.

``Bearer <key>`` (any case of the scheme) or the bare key, as isol8 clients send
it. Authentication itself (tenants/authentication.py) and the health route's
operator view both read the header through this function.
"""

from __future__ import annotations


def parse_authorization(header: str) -> str:
    """Return the key from an Authorization header value ("" when there is none)."""
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip()
    return value
