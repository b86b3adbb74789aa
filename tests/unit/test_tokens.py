from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.services.tokens import (
    new_token,
    parse_token,
    token_fingerprint,
    token_matches,
)


def test_token_format_and_entropy() -> None:
    token, digest = new_token(0x1234ABCD)
    session_part, secret = token.split(".")
    assert session_part == "000000001234abcd"
    padded = secret + "=" * (-len(secret) % 4)
    assert len(base64.urlsafe_b64decode(padded)) == 32  # 256 bits from secrets
    assert digest == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in digest  # only the hash is kept


def test_tokens_are_distinct() -> None:
    tokens = {new_token(7)[0] for _ in range(1000)}
    assert len(tokens) == 1000


def test_new_token_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError):
        new_token(-1)
    with pytest.raises(ValueError):
        new_token(1 << 64)
    assert parse_token(new_token((1 << 64) - 1)[0]) is not None


def test_parse_round_trip() -> None:
    token, _ = new_token(42)
    parsed = parse_token(token)
    assert parsed is not None
    assert parsed == (42, token.split(".")[1])


@pytest.mark.parametrize("bad", [
    "",
    ".",
    "garbage",
    "000000000000002a",
    "000000000000002a.",
    "000000000000002A." + "a" * 43,  # upper-case hex
    "2a." + "a" * 43,  # id not 16 hex
    "000000000000002a." + "a" * 42,  # secret too short
    "000000000000002a." + "a" * 44,  # secret too long
    "000000000000002a." + "a" * 42 + "=",  # padding is not part of the format
    "000000000000002a." + "a" * 42 + "+",  # not URL-safe base64
    "000000000000002a." + "a" * 42 + "\u00e9",  # non-ascii
    "000000000000002a.a" + "\uff41" * 42,
    "000000000000002a." + "a" * 43 + "\n",
    " 000000000000002a." + "a" * 43,
    "000000000000002a.000000000000002a." + "a" * 43,
    "x" * 129,
    "000000000000002a." + "a" * 200,
])
def test_parse_rejects_malformed(bad: str) -> None:
    assert parse_token(bad) is None


def test_token_matches() -> None:
    token, digest = new_token(1)
    parsed = parse_token(token)
    assert parsed is not None
    _, secret = parsed
    assert token_matches(secret, digest)
    _, other_digest = new_token(1)
    assert not token_matches(secret, other_digest)
    assert not token_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), digest)
    assert not token_matches(secret, b"")


def test_fingerprint_is_short_and_does_not_leak() -> None:
    token, _ = new_token(99)
    fp = token_fingerprint(token)
    assert len(fp) == 8 and all(c in "0123456789abcdef" for c in fp)
    assert fp not in token
    assert token.split(".")[1][:8] not in fp
    assert token_fingerprint(token) == fp  # stable, so log lines can be correlated
    assert token_fingerprint(new_token(99)[0]) != fp
    assert len(token_fingerprint("\ud800 any garbage")) == 8
