"""Client addresses behind trusted proxies: only the right end of X-Forwarded-For is trusted."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.transport.server import forwarded_client

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]


def trusted(address: str) -> bool:
    return any(ipaddress.ip_address(address) in net for net in PROXIES)


@pytest.mark.parametrize(("values", "expected"), [
    ([], "127.0.0.1"),  # no header: the proxy itself
    (["203.0.113.5"], "203.0.113.5"),
    # The client forged a left-hand entry; our proxy appended what it really saw.
    (["6.6.6.6, 203.0.113.5"], "203.0.113.5"),
    # Two of our proxies in a row: skip both.
    (["6.6.6.6, 203.0.113.5, 10.1.2.3"], "203.0.113.5"),
    (["203.0.113.5", "10.1.2.3"], "203.0.113.5"),  # the header repeated
    # Garbage stops the walk at the last trusted hop, never becomes "the address".
    (["x" * 5000], "127.0.0.1"),
    (["junk, 10.1.2.3"], "10.1.2.3"),
    (["2001:db8::1"], "2001:db8::1"),
])
def test_forwarded_client(values: list[str], expected: str) -> None:
    assert forwarded_client("127.0.0.1", values, trusted) == expected
