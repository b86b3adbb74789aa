"""The registry shared by several gateway nodes through one Redis.

The key layout and the message format are described in ``gateway.registry.redis_keys``.

Redis is written on bind, unbind and the heartbeat, and read on revoke, push and the operator
view; never per ordinary request.

Outages: a supervisor task owns the subscription. When the link drops (the pub/sub read fails, a
write fails, or the heartbeat finds this node's liveness key missing, e.g. after a Redis restart)
``healthy`` turns False and the supervisor reconnects with exponential backoff. Meanwhile bind and
unbind only update the LocalHub; revoke and push deliver locally. Once back, the node subscribes,
rewrites *all* of its entries in one transaction (removing index entries of sockets that left
meanwhile), turns healthy, and calls the resync hook: pub/sub messages sent during the outage are
lost for good (S3).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from gateway.errors import Unavailable
from gateway.registry.base import KickReceipt, LiveEntry, LiveSocket, ResyncHook
from gateway.registry.local import LocalHub
from gateway.registry.redis_keys import (
    FORGET_IF_DEAD,
    MALFORMED_MESSAGE,
    AckMessage,
    KeyLayout,
    PushMessage,
    RevokeMessage,
    UnknownMessageKind,
    decode_entry,
    decode_message,
    encode_ack,
    encode_entry,
    encode_push,
    encode_revoke,
)

log = logging.getLogger(__name__)

_BACKOFF_START = 0.05
_BACKOFF_CAP = 2.0
#: A pub/sub read gives up after this long, so the listener notices a link that another task
#: found broken without cancelling a read halfway through.
_POLL = 0.1
#: Fail fast: a bind must not hang on a dead Redis (the heartbeat and replay handle recovery).
_CONNECT_TIMEOUT = 0.5
_COMMAND_TIMEOUT = 1.0
#: OSError covers socket errors redis-py lets through (and the builtin TimeoutError).
_LINK_ERRORS = (RedisError, OSError)


@dataclass(slots=True)
class _AckWait:
    closed: dict[str, int] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RedisRegistry:
    def __init__(self, url: str, node: str, *, heartbeat: float = 5.0, ttl: float = 20.0,
                 clock: Callable[[], float] = time.monotonic, prefix: str = "osm:reg:") -> None:
        if not 0 < heartbeat < ttl:
            raise ValueError("heartbeat must be positive and shorter than ttl")
        self.node = node
        self.hub = LocalHub()
        self._heartbeat = heartbeat
        self._ttl_ms = int(ttl * 1000)
        self._clock = clock
        self._keys = KeyLayout(prefix)
        common: dict[str, Any] = {
            "socket_connect_timeout": _CONNECT_TIMEOUT,
            "socket_timeout": _COMMAND_TIMEOUT, "socket_keepalive": True,
        }
        # One retry lets a pooled connection that died with a restarted Redis reconnect
        # transparently; a real outage still fails within the timeouts.
        self._redis = Redis.from_url(url, retry=Retry(NoBackoff(), 1), decode_responses=True,
                                     **common)
        # The subscription must never be re-established behind our back: a silent resubscribe
        # would skip the replay and the resync hook. Raw bytes: a message that is not UTF-8 must
        # be dropped by _on_message, not blow up inside the reader.
        self._bus = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)
        self._forget_script = self._redis.register_script(FORGET_IF_DEAD)
        self._healthy = False
        self._lost = asyncio.Event()
        self._first_attempt = asyncio.Event()
        # Serializes index writes, so an unbind's "last socket of this user" SREM and a
        # concurrent bind's SADD reach Redis in the order the hub saw them.
        self._write_lock = asyncio.Lock()
        self._gone_users: set[int] = set()  # left during an outage: SREM on replay
        self._gone_sessions: set[int] = set()
        self._acks: dict[str, _AckWait] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_hook: ResyncHook | None = None
        self._resyncs: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    def set_resync_hook(self, hook: ResyncHook) -> None:
        self._resync_hook = hook

    async def start(self) -> None:
        """Start the supervisor and heartbeat. Waits for the first connection attempt so sockets
        bound right after a healthy start are reachable, but never fails for Redis."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"registry-supervisor-{self.node}"),
            asyncio.create_task(self._beat(), name=f"registry-heartbeat-{self.node}"),
        ]
        await self._first_attempt.wait()

    async def stop(self) -> None:
        was_healthy = self._healthy
        await self._cancel_tasks()
        async with self._write_lock:
            if was_healthy:
                pipe = self._redis.pipeline(transaction=True)
                pipe.delete(self._keys.node(self.node), self._keys.conns(self.node))
                for user_id in self.hub.user_ids():
                    pipe.srem(self._keys.user(user_id), self.node)
                for session_id in self.hub.session_ids():
                    pipe.srem(self._keys.session(session_id), self.node)
                try:
                    await pipe.execute()
                except _LINK_ERRORS as exc:
                    log.warning("registry %s: cleanup on stop failed, entries will expire: %r",
                                self.node, exc)
            self.hub.clear()
        await self._close_clients()

    async def _crash(self) -> None:
        """Tests only: die like a killed process, leaving every key to expire on its own."""
        await self._cancel_tasks()
        await self._close_clients()

    async def _cancel_tasks(self) -> None:
        tasks = self._tasks + list(self._resyncs)
        self._tasks = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._healthy = False
        for waiter in self._acks.values():
            waiter.done.set()

    async def _close_clients(self) -> None:
        await self._bus.aclose()
        await self._redis.aclose()

    # -- bind / unbind ---------------------------------------------------------------------

    async def bind(self, sock: LiveSocket) -> None:
        self.hub.add(sock)
        async with self._write_lock:
            # Unhealthy: the replay writes it. Replaced or unbound while we waited: nothing to do.
            if not self._healthy or self.hub.get(sock.conn_id) is not sock:
                return
            conns = self._keys.conns(self.node)
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(conns, str(sock.conn_id), encode_entry(sock.user_id, sock.session_id))
            pipe.pexpire(conns, self._ttl_ms)  # the hash may have just been created
            pipe.sadd(self._keys.user(sock.user_id), self.node)
            pipe.sadd(self._keys.session(sock.session_id), self.node)
            await self._run(pipe, "bind")

    async def unbind(self, sock: LiveSocket) -> None:
        if not self.hub.remove(sock):
            return
        async with self._write_lock:
            # Decided under the lock, from the hub as it is now, so a concurrent bind of the same
            # user is never un-indexed.
            user_gone = not self.hub.has_user(sock.user_id)
            session_gone = not self.hub.has_session(sock.session_id)
            if self._healthy:
                pipe = self._redis.pipeline(transaction=False)
                if self.hub.get(sock.conn_id) is None:
                    pipe.hdel(self._keys.conns(self.node), str(sock.conn_id))
                if user_gone:
                    pipe.srem(self._keys.user(sock.user_id), self.node)
                if session_gone:
                    pipe.srem(self._keys.session(sock.session_id), self.node)
                if await self._run(pipe, "unbind"):
                    return
            if user_gone:
                self._gone_users.add(sock.user_id)
            if session_gone:
                self._gone_sessions.add(sock.session_id)

    def local_sockets(self, user_id: int | None = None) -> list[LiveSocket]:
        return self.hub.sockets(user_id)

    # -- revoke / push ---------------------------------------------------------------------

    async def revoke(
        self, user_id: int, session_ids: Sequence[int], *, wait_ack: float = 0.0
    ) -> KickReceipt:
        deadline = self._clock() + wait_ack
        ids = [int(s) for s in session_ids]
        receipt = KickReceipt(closed={self.node: self.hub.deliver_revoke(user_id, ids)})
        ack_id = secrets.token_hex(8) if wait_ack > 0 else None
        waiter = _AckWait()
        if ack_id is not None:
            self._acks[ack_id] = waiter  # before publishing: an ack can beat PUBLISH's reply
        try:
            reached, deaf = await self._publish(
                user_id, "revoke", encode_revoke(user_id, ids, self.node, ack_id))
            if ack_id is None:
                return receipt
            waiter.pending = reached - waiter.closed.keys()
            waiter.done.clear()
            if waiter.pending:
                try:
                    await asyncio.wait_for(waiter.done.wait(), max(0.0, deadline - self._clock()))
                except TimeoutError:
                    pass
            receipt.closed.update(waiter.closed)
            receipt.unacknowledged = sorted(waiter.pending | deaf)
            return receipt
        finally:
            if ack_id is not None:
                del self._acks[ack_id]

    async def push(self, user_id: int, update: bytes) -> None:
        self.hub.deliver_push(user_id, update)
        await self._publish(user_id, "push", encode_push(user_id, update))

    async def _publish(self, user_id: int, kind: str, data: str) -> tuple[set[str], set[str]]:
        """Send the encoded message ``data`` to the other nodes indexed for the user. Returns the
        nodes it reached and the live nodes nobody listened for (their sockets wait for the
        periodic re-check)."""
        if not self._healthy:
            return set(), set()  # delivered locally; remote nodes re-check on their own
        try:
            index = self._keys.user(user_id)
            members = await self._redis.smembers(index)
            others = sorted(str(n) for n in members if str(n) != self.node)
            if not others:
                return set(), set()
            pipe = self._redis.pipeline(transaction=False)
            for node in others:
                pipe.publish(self._keys.channel(node), data)
            for node in others:
                pipe.exists(self._keys.node(node))
            replies = await pipe.execute()
            heard, alive = replies[: len(others)], replies[len(others):]
            reached = {n for n, h in zip(others, heard, strict=True) if h}
            deaf = {n for n, h, a in zip(others, heard, alive, strict=True) if not h and a}
            dead = [n for n, h, a in zip(others, heard, alive, strict=True) if not h and not a]
            await self._forget_dead(index, dead)
            return reached, deaf
        except _LINK_ERRORS as exc:
            self._link_failed(f"{kind} for user {user_id}", exc)
            return set(), set()

    async def _forget_dead(self, index: str, nodes: Sequence[str]) -> None:
        # Rare (only after a crash), so one round trip per node is fine.
        for node in nodes:
            await self._forget_script(keys=[index, self._keys.node(node)], args=[node])

    # -- the operator view -----------------------------------------------------------------

    async def live_entries(self, *, user_id: int | None = None,
                           session_id: int | None = None) -> list[LiveEntry]:
        """Raises ``Unavailable`` when Redis cannot answer: a partial view would mislead."""
        try:
            return await self._read_entries(user_id, session_id)
        except _LINK_ERRORS as exc:
            log.warning("registry %s: live_entries failed: %r", self.node, exc)
            raise Unavailable("live-connection registry unreachable") from exc

    async def _read_entries(self, user_id: int | None,
                            session_id: int | None) -> list[LiveEntry]:
        indexes = ([self._keys.user(user_id)] if user_id is not None else []) + (
            [self._keys.session(session_id)] if session_id is not None else [])
        if indexes:
            pipe = self._redis.pipeline(transaction=False)
            for index in indexes:
                pipe.smembers(index)
            members: list[set[str]] = [{str(n) for n in m} for m in await pipe.execute()]
            nodes = sorted(set.intersection(*members))
        else:
            nodes = sorted([self._keys.node_name(key) async for key in
                            self._redis.scan_iter(match=self._keys.node_pattern(), count=1000)])
        pipe = self._redis.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self._keys.node(node))
            pipe.hgetall(self._keys.conns(node))
        replies = await pipe.execute()
        entries: list[LiveEntry] = []
        dead: list[str] = []
        for i, node in enumerate(nodes):
            alive, conns = replies[2 * i], replies[2 * i + 1]
            if not alive:
                dead.append(node)
                continue
            for conn, value in conns.items():
                entry = _parse_entry(node, str(conn), str(value))
                if entry is None or (user_id is not None and entry.user_id != user_id) or (
                        session_id is not None and entry.session_id != session_id):
                    continue
                entries.append(entry)
        for index in indexes:
            await self._forget_dead(index, dead)
        return sorted(entries, key=lambda e: (e.node, e.conn_id))

    # -- link supervision ------------------------------------------------------------------

    def _link_failed(self, what: str, exc: BaseException | None) -> None:
        if self._healthy:
            log.warning("registry %s: Redis link lost (%s): %r", self.node, what, exc)
        self._healthy = False
        self._lost.set()

    async def _run(self, pipe: Any, what: str) -> bool:
        try:
            await pipe.execute()
            return True
        except _LINK_ERRORS as exc:
            self._link_failed(what, exc)
            return False

    async def _supervise(self) -> None:
        backoff = _BACKOFF_START
        outage = False
        down_since = self._clock()
        while True:
            self._lost.clear()
            pubsub: PubSub = self._bus.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._keys.channel(self.node))
                async with self._write_lock:
                    await self._register_all()
                    self._healthy = True
                self._first_attempt.set()
                backoff = _BACKOFF_START
                if outage:
                    log.info("registry %s: Redis link back after %.1f s", self.node,
                             self._clock() - down_since)
                    self._spawn_resync()
                outage = False
                await self._listen(pubsub)
            except _LINK_ERRORS as exc:
                self._link_failed("subscription", exc)
            except Exception:
                # Our own bug: logged loudly, and treated like a lost link so the node keeps
                # retrying instead of staying silently unsubscribed.
                log.exception("registry %s: supervisor failed", self.node)
                self._link_failed("supervisor error", None)
            finally:
                self._healthy = False
                try:
                    await pubsub.aclose()
                except _LINK_ERRORS as exc:  # the link is already gone; nothing left to release
                    log.debug("registry %s: closing pub/sub: %r", self.node, exc)
            if not outage:
                outage, down_since = True, self._clock()
            self._first_attempt.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_CAP)

    async def _register_all(self) -> None:
        """Rewrite every entry of this node (Redis may have restarted empty or missed writes)."""
        conns_key = self._keys.conns(self.node)
        old = await self._redis.hgetall(conns_key)  # also left over by a previous process
        stale = [e for c, v in old.items() if (e := _parse_entry(self.node, str(c), str(v)))]
        users, sessions = self.hub.user_ids(), self.hub.session_ids()
        pipe = self._redis.pipeline(transaction=True)
        # Liveness first: from here on no reader's cleanup script may remove our index entries.
        pipe.set(self._keys.node(self.node), "1", px=self._ttl_ms)
        pipe.delete(conns_key)
        mapping: dict[FieldT, EncodableT] = {
            str(s.conn_id): encode_entry(s.user_id, s.session_id) for s in self.hub.sockets()}
        if mapping:
            pipe.hset(conns_key, mapping=mapping)
            pipe.pexpire(conns_key, self._ttl_ms)
        for user_id in users:
            pipe.sadd(self._keys.user(user_id), self.node)
        for session_id in sessions:
            pipe.sadd(self._keys.session(session_id), self.node)
        for user_id in (self._gone_users | {e.user_id for e in stale}) - users:
            pipe.srem(self._keys.user(user_id), self.node)
        for session_id in (self._gone_sessions | {e.session_id for e in stale}) - sessions:
            pipe.srem(self._keys.session(session_id), self.node)
        await pipe.execute()
        self._gone_users.clear()
        self._gone_sessions.clear()

    async def _listen(self, pubsub: PubSub) -> None:
        while not self._lost.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL)
            if message is not None and message.get("type") == "message":
                await self._on_message(message["data"])

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            if not self._healthy:
                continue  # the supervisor is reconnecting; its replay rewrites everything
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(self._keys.node(self.node))
            pipe.set(self._keys.node(self.node), "1", px=self._ttl_ms)
            pipe.pexpire(self._keys.conns(self.node), self._ttl_ms)
            try:
                existed = (await pipe.execute())[0]
            except _LINK_ERRORS as exc:
                self._link_failed("heartbeat", exc)
                continue
            if not existed:
                # Redis restarted or our key lapsed: entries and messages may be lost.
                self._link_failed("heartbeat found this node's keys gone", None)

    def _spawn_resync(self) -> None:
        if self._resync_hook is None:
            return
        task = asyncio.create_task(self._resync(self._resync_hook))
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _resync(self, hook: ResyncHook) -> None:
        try:
            await hook()
        except Exception:
            # A background task has nobody to raise to; the next outage or re-check retries.
            log.exception("registry %s: resync hook failed", self.node)

    # -- incoming messages -----------------------------------------------------------------

    async def _on_message(self, data: bytes) -> None:
        try:
            message = decode_message(data)
            if isinstance(message, RevokeMessage):
                closed = self.hub.deliver_revoke(message.user_id, message.session_ids)
                if message.ack_to is not None:
                    requester, ack_id = message.ack_to
                    await self._send_ack(requester, ack_id, closed)
            elif isinstance(message, PushMessage):
                self.hub.deliver_push(message.user_id, message.update)
            elif isinstance(message, AckMessage):
                self._on_ack(message.ack_id, message.node, message.closed)
        except UnknownMessageKind as exc:
            log.warning("registry %s: unknown message kind %r dropped", self.node, exc.kind)
        except MALFORMED_MESSAGE as exc:
            log.warning("registry %s: malformed message dropped: %r", self.node, exc)

    async def _send_ack(self, node: str, ack_id: str, closed: int) -> None:
        try:
            await self._redis.publish(self._keys.channel(node), encode_ack(ack_id, self.node, closed))
        except _LINK_ERRORS as exc:
            self._link_failed("ack", exc)

    def _on_ack(self, ack_id: str, node: str, closed: int) -> None:
        waiter = self._acks.get(ack_id)
        if waiter is None:
            return  # the revoke already gave up waiting
        waiter.closed[node] = closed
        waiter.pending.discard(node)
        if not waiter.pending:
            waiter.done.set()


def _parse_entry(node: str, conn: str, value: str) -> LiveEntry | None:
    try:
        return decode_entry(node, conn, value)
    except ValueError:
        log.warning("registry: malformed entry %r=%r of node %s ignored", conn, value, node)
        return None
