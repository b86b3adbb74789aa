"""Session tokens: a public session id and a random secret, of which only a hash is stored.

A token reads ``"<session id as 16 lowercase hex>.<secret>"``, the secret being
``secrets.token_urlsafe(32)``: 256 random bits, 43 URL-safe base64 characters (T1). The store
keeps ``sha256(secret)`` only (T2): a high-entropy secret needs no slow hash, and a leaked
database yields no usable token. The session is found by its public id part and the secret is
then compared in constant time (T3), so no lookup ever runs on the secret itself. Logs show
``token_fingerprint`` at most (T5).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

SECRET_BYTES = 32
MAX_TOKEN_CHARS = 128
_SESSION_ID_LIMIT = 1 << 64
# Exactly what new_token produces: 16 lowercase hex, a dot, 43 URL-safe base64 characters.
_TOKEN_RE = re.compile(r"([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")


def new_token(session_id: int) -> tuple[str, bytes]:
    """A fresh token for ``session_id`` and the digest to store for it."""
    if not 0 <= session_id < _SESSION_ID_LIMIT:
        raise ValueError("session id out of range")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{session_id:016x}.{secret}", _digest(secret)


def parse_token(token: str) -> tuple[int, str] | None:
    """``(session_id, secret)``, or None for anything that is not a token we could have issued."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        return None
    return int(match.group(1), 16), match.group(2)


def token_matches(secret: str, stored_hash: bytes) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, compared in constant time (T3)."""
    return hmac.compare_digest(_digest(secret), stored_hash)


def token_fingerprint(token: str) -> str:
    """A short, one-way tag for logs: 8 hex characters of sha256 of the whole token (T5)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
