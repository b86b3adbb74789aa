"""One-time codes for email verification and password reset (SECURITY.md C1, C2).

A code is 8 decimal digits from ``secrets`` (about 26.6 bits; with at most ``code_max_attempts``
tries per code and the code-check throttle, guessing is hopeless). It lives ``code_ttl`` seconds
(at most 10 minutes) by this node's clock, works once, dies after ``code_max_attempts`` wrong
tries even if the right one comes next, and is bound to one (account, purpose): a new code for
the same pair replaces the old one.

Only ``HMAC-SHA-256(server secret, "purpose|user_id|code")`` is stored, so a leaked database
yields no code, and a code for one account or purpose cannot be replayed for another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import Gone, InvalidArgument
from gateway.store.codes import CodeStore, Purpose, Verdict

__all__ = ["CODE_DIGITS", "MAX_TTL", "CodeService", "IssuedCode", "Purpose", "Verdict"]

CODE_DIGITS = 8
MAX_TTL = 600.0  # C1: ten minutes at most
MAX_ATTEMPTS = 5  # C1: five wrong tries at most
# Nothing longer can be a code; longer input is cut before hashing so it costs nothing.
_MAX_INPUT = 64

WRONG_CODE = "invalid code"
CODE_GONE = "code expired or used; request a new one"
CODE_REFUSED = "invalid, expired or used code; request a new one"


def new_code() -> str:
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def code_mac(secret: bytes, purpose: Purpose, user_id: int, code: str) -> bytes:
    data = f"{purpose.value}|{user_id}|{code.strip()[:_MAX_INPUT]}"
    return hmac.new(secret, data.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def raise_for(verdict: Verdict, *, reveal_wrong: bool = True) -> None:
    """Turn a refused verdict into its wire error: 400 for a wrong try, 410 for no live code.

    Flows addressed by email to someone not signed in pass ``reveal_wrong=False``: there "wrong
    code" would tell that a code is pending, hence that the address is registered, so every
    refusal is the same 410 (E2).
    """
    if verdict is Verdict.OK:
        return
    if not reveal_wrong:
        raise Gone(CODE_REFUSED)
    if verdict is Verdict.WRONG:
        raise InvalidArgument(WRONG_CODE)
    raise Gone(CODE_GONE)


@dataclass(frozen=True, slots=True)
class IssuedCode:
    code: str  # goes into the mail, nowhere else
    mac: bytes
    expires_at: int


class CodeService:
    def __init__(self, store: CodeStore, secret: bytes, ttl: float, max_attempts: int,
                 clock_ms: Callable[[], int]) -> None:
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"code_ttl must be more than 0 and at most {MAX_TTL:.0f} seconds")
        if not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"code_max_attempts must be 1-{MAX_ATTEMPTS}")
        self.store = store
        self._secret = secret
        self.ttl_ms = int(ttl * 1000)
        self.max_attempts = max_attempts
        self.clock_ms = clock_ms

    def mac(self, user_id: int, purpose: Purpose, code: str) -> bytes:
        return code_mac(self._secret, purpose, user_id, code)

    def new(self, user_id: int, purpose: Purpose) -> IssuedCode:
        """A fresh code for the caller to store (e.g. inside its own transaction)."""
        code = new_code()
        return IssuedCode(code, self.mac(user_id, purpose, code), self.clock_ms() + self.ttl_ms)

    async def issue(self, user_id: int, purpose: Purpose) -> str:
        """Create and store a code for (user, purpose), replacing the previous one."""
        issued = self.new(user_id, purpose)
        await self.store.put(user_id, purpose, issued.mac, issued.expires_at)
        return issued.code

    async def check(self, user_id: int, purpose: Purpose, code: str, *, consume: bool,
                    reveal_wrong: bool = True) -> None:
        """Raise 400 / 410 unless ``code`` is the live code; ``consume`` uses it up."""
        verdict = await self.store.check(user_id, purpose, self.mac(user_id, purpose, code),
                                         self.clock_ms(), self.max_attempts, consume=consume)
        raise_for(verdict, reveal_wrong=reveal_wrong)
