"""What the Redis registry stores and sends: the key layout and the message format.

Key layout (``P`` is the prefix, ``osm:reg:`` by default; every node has a distinct name):

* ``P node:{node}`` — string, the node's liveness: written with ``PX=ttl`` and refreshed by the
  heartbeat. Gone means the node is dead, whatever else still names it.
* ``P conns:{node}`` — hash ``conn_id -> "user_id:session_id"`` of the node's live sockets. Same
  TTL as the liveness key, so a crashed node's sockets vanish with it.
* ``P user:{user_id}`` / ``P sess:{session_id}`` — sets of node names holding sockets of that
  user / session. No TTL (several nodes share them): readers skip members whose liveness key is
  gone and drop them with a script that re-checks liveness atomically, so the cleanup cannot undo
  a node that re-registers at the same moment.
* ``P chan:{node}`` — the node's pub/sub channel. Messages are JSON objects::

    {"k": "revoke", "u": user_id, "s": [session_id, ...], "from": node, "ack": id or null}
    {"k": "push", "u": user_id, "b": base64 of the serialized Update}
    {"k": "ack", "ack": id, "from": node, "n": sockets_closed}

  Acks go to the requesting node's own channel, which it listens to anyway.

Everything here is pure: no I/O, no logging. Decoding raises and the registry decides what a
malformed message or entry costs (a warning, then it is dropped).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.registry.base import LiveEntry

# KEYS[1] = index set, KEYS[2] = the member's liveness key, ARGV[1] = node name.
FORGET_IF_DEAD = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The names of every key and channel under one prefix."""

    prefix: str

    def node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def conns(self, node: str) -> str:
        return f"{self.prefix}conns:{node}"

    def user(self, user_id: int) -> str:
        return f"{self.prefix}user:{user_id}"

    def session(self, session_id: int) -> str:
        return f"{self.prefix}sess:{session_id}"

    def channel(self, node: str) -> str:
        return f"{self.prefix}chan:{node}"

    def node_pattern(self) -> str:
        """A SCAN pattern matching every liveness key."""
        return self.node("*")

    def node_name(self, node_key: str) -> str:
        """The node a liveness key belongs to."""
        return node_key[len(self.node("")):]


# -- the conns hash ---------------------------------------------------------------------------

def encode_entry(user_id: int, session_id: int) -> str:
    """The value stored under a conn_id in ``P conns:{node}``."""
    return f"{user_id}:{session_id}"


def decode_entry(node: str, conn: str, value: str) -> LiveEntry:
    """Raises ValueError for a field or value not written by ``encode_entry``."""
    user, session = value.split(":")
    return LiveEntry(node, int(conn), int(user), int(session))


# -- pub/sub messages -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RevokeMessage:
    user_id: int
    session_ids: list[int]
    #: (requesting node, ack id) when the sender waits for an acknowledgement, else None.
    ack_to: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class PushMessage:
    user_id: int
    update: bytes


@dataclass(frozen=True, slots=True)
class AckMessage:
    ack_id: str
    node: str  # the acknowledging node
    closed: int


Message = RevokeMessage | PushMessage | AckMessage

#: What ``decode_message`` raises for bytes that do not follow the format.
MALFORMED_MESSAGE = (ValueError, KeyError, TypeError, binascii.Error)


class UnknownMessageKind(Exception):
    """A well-formed message of a kind this node does not know."""

    def __init__(self, kind: object) -> None:
        super().__init__(kind)
        self.kind = kind


def encode_revoke(user_id: int, session_ids: Sequence[int], sender: str,
                  ack_id: str | None) -> str:
    return _dumps({"k": "revoke", "u": user_id, "s": list(session_ids), "from": sender,
                   "ack": ack_id})


def encode_push(user_id: int, update: bytes) -> str:
    return _dumps({"k": "push", "u": user_id, "b": base64.b64encode(update).decode()})


def encode_ack(ack_id: str, sender: str, closed: int) -> str:
    return _dumps({"k": "ack", "ack": ack_id, "from": sender, "n": closed})


def decode_message(data: bytes) -> Message:
    """Raises one of ``MALFORMED_MESSAGE``, or ``UnknownMessageKind``."""
    message = json.loads(data)
    kind = message["k"]
    if kind == "revoke":
        user_id, session_ids = int(message["u"]), [int(s) for s in message["s"]]
        ack_to = ((str(message["from"]), str(message["ack"]))
                  if message.get("ack") and message.get("from") else None)
        return RevokeMessage(user_id, session_ids, ack_to)
    if kind == "push":
        update = base64.b64decode(message["b"], validate=True)
        return PushMessage(int(message["u"]), update)
    if kind == "ack":
        return AckMessage(str(message["ack"]), str(message["from"]), int(message["n"]))
    raise UnknownMessageKind(kind)


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
