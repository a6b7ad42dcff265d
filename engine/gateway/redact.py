"""Secrets out of every byte the gateway sends or logs: provider keys, credentials and header values,
and gateway key secrets."""
from __future__ import annotations

import weakref

REPLACEMENT = "[redacted]"
# A shorter secret would blank ordinary words out of answers; keys this short are not secrets anyway.
MIN_SECRET = 8
# The longest upstream text that reaches a client or a log line, cut only once it is redacted.
MESSAGE_LIMIT = 600


class Redactor:
    """Replaces each of a fixed set of secrets; false when there is nothing to hide, so callers
    skip it entirely. One `in` test per secret (a fast linear search) and a replace when found."""

    __slots__ = ("texts", "blobs", "_split")

    def __init__(self, secrets=()):
        # Longest first: a secret that contains another one is replaced whole.
        found = sorted({s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET},
                       key=len, reverse=True)
        self.texts = tuple(found)
        self.blobs = tuple(s.encode("utf-8") for s in found)
        self._split = None

    def split_secrets(self):
        """What a stream needs to catch a secret cut across its events (streamredact.SplitSecrets),
        built on the first stream of a policy with secrets."""
        if self._split is None:
            from .streamredact import SplitSecrets
            self._split = SplitSecrets(self.texts)
        return self._split

    def __bool__(self) -> bool:
        return bool(self.texts)

    def text(self, text: str) -> str:
        for secret in self.texts:
            if secret in text:
                text = text.replace(secret, REPLACEMENT)
        return text

    def bytes(self, blob: bytes) -> bytes:
        for secret in self.blobs:
            if secret in blob:
                blob = blob.replace(secret, b"[redacted]")
        return blob

    def message(self, text: str, limit: int = MESSAGE_LIMIT) -> str:
        """Upstream text for a client or a log: redacted first, then cut, so no cut can split a
        secret and let its first part through."""
        text = self.text(text)
        return text if len(text) <= limit else text[:limit] + "..."


NOTHING = Redactor()
_by_policy: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def policy_redactor(policy) -> Redactor:
    """Every provider key and plain gateway key secret of a policy, built once per policy."""
    found = _by_policy.get(policy)
    if found is None:
        secrets = [secret for spec in policy.providers.values() for secret in spec.secrets()]
        secrets += [secret for spec in getattr(policy, "servers", {}).values() for secret in spec.secrets()]
        secrets += [key.secret for key in policy.keys]
        found = _by_policy[policy] = Redactor(secrets)
    return found
