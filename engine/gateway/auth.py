"""Gateway keys: Bearer secrets checked in constant time against every declared key."""
from __future__ import annotations

import hashlib
import hmac

from ..lang.spec import KeySpec
from .errors import GatewayError


class KeyRing:
    """Holds only SHA-256 digests, so no secret stays in memory longer than loading needs."""

    def __init__(self, keys: tuple[KeySpec, ...]):
        self.entries = tuple(
            (k.name, bytes.fromhex(k.sha256) if k.sha256 else hashlib.sha256(k.secret.encode()).digest())
            for k in keys)

    @property
    def open(self) -> bool:
        return not self.entries

    def authenticate(self, authorization: str | None) -> str:
        """The key's name, "" when the gateway is open; raises a 401 GatewayError otherwise."""
        if not self.entries:
            return ""
        if not authorization:
            raise GatewayError(401, "missing API key: send 'Authorization: Bearer <key>' "
                               "('x-api-key: <key>' also works on /v1/messages)",
                               code="missing_api_key")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(401, "the Authorization header must be 'Bearer <key>'",
                               code="invalid_api_key")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = ""
        # Compare against every key, without stopping early, so timing reveals nothing.
        for name, expected in self.entries:
            if hmac.compare_digest(digest, expected) and not found:
                found = name
        if not found:
            raise GatewayError(401, "invalid API key", code="invalid_api_key")
        return found
