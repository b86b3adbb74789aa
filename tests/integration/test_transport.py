"""The WebSocket transport against a real server in this event loop, with real websockets clients."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from google.protobuf.message import DecodeError
from prometheus_client.parser import text_string_to_metric_families
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State as WsState
from websockets.uri import parse_uri

from gateway.proto import core_pb2
from tests.support.client import TestClient, error_code
from tests.support.flows import eventually
from tests.support.gateway import InProcessGateway, running_gateway
from tests.support.gateway import test_settings as gateway_settings

TIMEOUT = 5.0


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        yield gw


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def unserved(req_id: int) -> bytes:
    """ClientMessage{id, field 4 (messages_send_message) = {}}, built by hand."""
    return b"\x08" + varint(req_id) + b"\x22\x00"


async def close_of(ws: Any, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Read until the server closes; the close code and reason the client received."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None, "the connection ended without a close frame"
    return rcvd.code, rcvd.reason


async def next_result(ws: Any, timeout: float = TIMEOUT) -> tuple[int, core_pb2.RPCResult]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, bytes)
    msg = core_pb2.ServerMessage.FromString(raw)
    assert msg.WhichOneof("message") == "result", msg
    return msg.id, msg.result


async def http_get(url: str) -> tuple[int, str, str]:
    def get() -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read().decode()
    return await asyncio.to_thread(get)


# -- the real client's start-up ------------------------------------------------------------------

class WallClockIds:
    """Request ids as the real Osmium client makes them: wall-clock ms in 32 bits, increasing."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1_000_000 & 0xFFFFFFFF)
        return self.last


async def test_real_client_startup_sequence_and_keepalives(gateway: InProcessGateway) -> None:
    async with await TestClient.connect(gateway.url) as first:
        await first.initialize()
        signed = await first.sign_up(name="alice", email="alice@example.com", password="correct horse")
        assert signed.WhichOneof("result") == "authorization", signed
    token = signed.authorization.token

    next_id = WallClockIds()
    async with websockets.connect(gateway.url, max_size=None) as ws:
        init = core_pb2.ClientMessage(id=next_id())
        init.core_initialize.client_id = 1
        init.core_initialize.device_type = "browser"
        await ws.send(init.SerializeToString())
        _, res = await next_result(ws)
        assert (res.req_id, res.WhichOneof("result")) == (init.id, "initialized")

        # auth.authorize exactly as the client writes it: field 20 holding Authorize{token = 5}.
        auth_id = next_id()
        body = b"\x2a" + varint(len(token)) + token.encode()
        await ws.send(b"\x08" + varint(auth_id) + b"\xa2\x01" + varint(len(body)) + body)
        _, res = await next_result(ws)
        assert res.req_id == auth_id and res.WhichOneof("result") == "authorization", res
        assert res.authorization.token == token
        assert res.authorization.session_id == signed.authorization.session_id
        assert res.authorization.user.id == signed.authorization.user.id

        # Keepalives (several: the client sends one per reconnect) get no answer at all: the very
        # next message on the socket is the reply to the request sent after them.
        for _ in range(3):
            await ws.send(b"\x08\x01")
        sessions = core_pb2.ClientMessage(id=next_id())
        sessions.auth_get_sessions.SetInParent()
        await ws.send(sessions.SerializeToString())
        _, res = await next_result(ws)
        assert res.req_id == sessions.id and res.WhichOneof("result") == "sessions", res
        assert res.sessions.current == signed.authorization.session_id


async def test_server_message_ids_count_1_2_3_across_results(gateway: InProcessGateway) -> None:
    async with websockets.connect(gateway.url) as ws:
        early = core_pb2.ClientMessage(id=50)
        early.auth_get_sessions.SetInParent()
        init = core_pb2.ClientMessage(id=51)
        init.core_initialize.SetInParent()
        signup = core_pb2.ClientMessage(id=54)
        signup.auth_sign_up.name = "numbers"
        later = core_pb2.ClientMessage(id=55)
        later.auth_get_sessions.SetInParent()
        frames = [early.SerializeToString(), init.SerializeToString(), b"\x08\x01", unserved(52),
                  b"\x08\x35\x12\x05\x0a", signup.SerializeToString()]
        for data in frames:
            await ws.send(data)
        seen = [await next_result(ws) for _ in range(5)]
        # Sign-up runs in its own task (it may hash a password): ask the next one after its reply.
        await ws.send(later.SerializeToString())
        seen.append(await next_result(ws))
        assert [msg_id for msg_id, _ in seen] == [1, 2, 3, 4, 5, 6]
        assert [res.req_id for _, res in seen] == [50, 51, 52, 53, 54, 55]
        codes = [res.error.error_code if res.WhichOneof("result") == "error" else res.WhichOneof("result")
                 for _, res in seen]
        assert codes == [412, "initialized", 501, 400, "authorization", "sessions"]


async def test_unserved_method_answers_501_and_socket_stays_open(gateway: InProcessGateway) -> None:
    async with await TestClient.connect(gateway.url) as client:
        await client.initialize()
        await client.send(unserved(77))
        res = await client.result(77)
        assert (res.error.error_code, res.error.error_message) == (501, "not implemented")
        signed = await client.sign_up(name="still here")
        assert signed.WhichOneof("result") == "authorization"
        await client.send(unserved(78))
        assert error_code(await client.result(78)) == 501


async def test_refusals_before_initialize_and_before_auth(gateway: InProcessGateway) -> None:
    async with await TestClient.connect(gateway.url) as client:
        assert error_code(await client.call("auth_sign_up", name="x")) == 412
        await client.initialize()
        assert error_code(await client.call("core_initialize")) == 412
        assert error_code(await client.call("auth_get_sessions")) == 401
        assert error_code(await client.authorize("not-a-token")) == 401
        # A refused token leaves the socket open and unauthenticated: signing up still works.
        assert (await client.sign_up(name="late")).WhichOneof("result") == "authorization"
        assert (await client.call("auth_get_sessions")).WhichOneof("result") == "sessions"


# -- garbage in ------------------------------------------------------------------------------

def wire_id(data: bytes) -> int | None:
    """The request id a reader can find in a frame that does not decode (first varint field 1
    met before anything unreadable), written independently of the gateway's codec."""
    pos = 0

    def read_varint() -> int | None:
        nonlocal pos
        value = 0
        for shift in range(0, 70, 7):
            if pos >= len(data):
                return None
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        return None

    while pos < len(data):
        key = read_varint()
        if key is None:
            return None
        wire = key & 7
        if wire == 0:
            value = read_varint()
            if value is None:
                return None
            if key >> 3 == 1:
                return value & 0xFFFFFFFF
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length = read_varint()
            if length is None:
                return None
            pos += length
        else:
            return None
    return None


def expected_reply(data: bytes) -> int | str | None:
    """The req_id the server must answer, None for a keepalive, "close" for id-less garbage."""
    try:
        msg = core_pb2.ClientMessage.FromString(data)
    except DecodeError:
        req_id = wire_id(data)
        return "close" if req_id is None else req_id
    if msg.SerializeToString() == core_pb2.ClientMessage(id=msg.id).SerializeToString():
        return None  # only an id: a keepalive
    return msg.id


def seed_frames(rng: random.Random) -> list[bytes]:
    out = []
    for i in range(40):
        req_id = rng.getrandbits(32)
        msg = core_pb2.ClientMessage(id=req_id)
        kind = i % 10
        if kind == 0:
            msg.core_initialize.client_id = rng.randrange(5)
            msg.core_initialize.device_type = "fuzz"
        elif kind == 1:
            msg.auth_sign_in.email = f"user{i}@example.com"
            msg.auth_sign_in.password = "password123"
        elif kind == 2:
            msg.auth_sign_up.name = f"fuzz {i}"
        elif kind == 3:
            msg.auth_authorize.token = "0123456789abcdef." + "x" * 43
        elif kind == 4:
            msg.auth_get_sessions.SetInParent()
        elif kind == 5:
            msg.auth_revoke_sessions.session_ids.extend(rng.getrandbits(64) for _ in range(3))
        elif kind == 6:
            msg.auth_lookup_invite.code = "abcdEFGH"
        elif kind == 7:
            for _ in range(2):
                msg.chats_create_chat.users.add(user_id=rng.getrandbits(64))
            msg.chats_create_chat.name = "group"
        elif kind == 8:
            out.append(unserved(req_id))
            continue
        out.append(msg.SerializeToString())
    return out


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    choice = rng.random()
    if choice < 0.2:
        return rng.randbytes(rng.randrange(0, 48))
    data = bytearray(rng.choice(seeds))
    if choice < 0.45 and data:
        return bytes(data[:rng.randrange(len(data))])  # truncated
    if choice < 0.8:
        for _ in range(rng.randrange(1, 4)):  # bit flips
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice < 0.9:
        pos = rng.randrange(len(data) + 1)  # random bytes spliced in
        return bytes(data[:pos] + rng.randbytes(rng.randrange(1, 6)) + data[pos:])
    return bytes(data + rng.choice(seeds))  # two messages glued: protobuf merges them


class FuzzSocket:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: Any = None
        self.expected: Counter[int] = Counter()
        self.received: Counter[int] = Counter()
        self.codes: Counter[int] = Counter()
        self.sentinels = iter(range(0xF0000000, 0xFFFFFFFF))
        self.closes = 0

    async def open(self) -> None:
        self.ws = await websockets.connect(self.url, max_size=None)
        self.expected.clear()
        self.received.clear()

    def take(self, raw: bytes | str) -> None:
        assert isinstance(raw, bytes)
        msg = core_pb2.ServerMessage.FromString(raw)
        if msg.WhichOneof("message") == "result":
            self.received[msg.result.req_id] += 1
            if msg.result.WhichOneof("result") == "error":
                self.codes[msg.result.error.error_code] += 1

    async def settle(self) -> None:
        """Send a sentinel request and read until it and every expected reply have arrived."""
        sentinel = next(self.sentinels)
        self.expected[sentinel] += 1
        await self.ws.send(unserved(sentinel))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while any(self.received[k] < n for k, n in self.expected.items()):
            self.take(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - loop.time())))
        assert self.received == self.expected, "a request got more than one reply"

    async def feed(self, data: bytes) -> None:
        outcome = expected_reply(data)
        await self.ws.send(data)
        if outcome == "close":
            try:
                while True:
                    self.take(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            except websockets.ConnectionClosed:
                pass
            rcvd = self.ws.protocol.close_rcvd
            assert rcvd is not None and rcvd.code == 1007, (data.hex(), rcvd)
            assert self.received == self.expected, data.hex()
            self.closes += 1
            await self.open()
            return
        if outcome is not None:
            self.expected[outcome] += 1
        try:
            await self.settle()
        except websockets.ConnectionClosed as closed:
            raise AssertionError(f"closed after {data.hex()} ({outcome}): {closed}") from None


async def test_random_and_mutated_frames_leave_the_server_serving(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, rate_limit_burst=100_000, initialize_timeout=120.0)
    async with running_gateway(settings) as gw:
        workers = [FuzzSocket(gw.url) for _ in range(4)]

        async def run(index: int, worker: FuzzSocket) -> None:
            rng = random.Random(1009 + index)
            seeds = seed_frames(rng)
            await worker.open()
            for _ in range(250):
                await worker.feed(mutate(rng, seeds))
            await worker.ws.close()

        await asyncio.gather(*(run(i, w) for i, w in enumerate(workers)))
        codes = sum((w.codes for w in workers), Counter())
        assert sum(w.closes for w in workers) > 0, "no id-less garbage was tried"
        assert codes[400] > 0 and codes[501] > 0
        assert codes[500] == 0, "a handler failed on fuzzed input (see the log)"

        async with await TestClient.connect(gw.url) as fresh:
            await fresh.initialize()
            assert (await fresh.sign_up(name="after the storm")).WhichOneof("result") == "authorization"
            assert (await fresh.call("auth_get_sessions")).WhichOneof("result") == "sessions"


async def test_text_frame_closes_1003(gateway: InProcessGateway) -> None:
    async with websockets.connect(gateway.url) as ws:
        await ws.send(core_pb2.ClientMessage(id=1).SerializeToString().decode())
        assert (await close_of(ws))[0] == 1003


async def test_undecodable_frame_without_id_closes_1007(gateway: InProcessGateway) -> None:
    async with websockets.connect(gateway.url) as ws:
        await ws.send(b"\xff\xff\xff")
        assert (await close_of(ws))[0] == 1007
    async with await TestClient.connect(gateway.url) as client:  # the server carries on
        await client.initialize()


async def test_frame_over_the_cap_closes_1009(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path, max_message_bytes=4096)) as gw:
        async with websockets.connect(gw.url, max_size=None) as ws:
            msg = core_pb2.ClientMessage(id=9)
            msg.core_initialize.device_type = "x" * 3000  # under the cap: served
            await ws.send(msg.SerializeToString())
            assert (await next_result(ws))[1].req_id == 9
            msg.auth_sign_up.name = "y" * 4100
            await ws.send(msg.SerializeToString())
            assert (await close_of(ws))[0] == 1009
        async with await TestClient.connect(gw.url) as client:
            await client.initialize()


# -- deadlines -----------------------------------------------------------------------------------

async def test_socket_that_never_initializes_closes_4002(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, initialize_timeout=0.3)
    async with running_gateway(settings) as gw, websockets.connect(gw.url) as ws:
        started = time.monotonic()
        await ws.send(b"\x08\x01")  # a keepalive is not an initialize
        code, reason = await close_of(ws)
        assert code == 4002 and "initialize" in reason
        assert time.monotonic() - started >= 0.25


async def test_initialized_but_unauthenticated_socket_closes_4003(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, initialize_timeout=0.3, unauthenticated_timeout=0.6)
    async with running_gateway(settings) as gw, await TestClient.connect(gw.url) as client:
        await client.initialize()
        started = time.monotonic()
        code, _ = await close_of(client.ws)
        assert code == 4003
        assert time.monotonic() - started >= 0.5  # not the 0.3 s initialize deadline


async def test_authorized_socket_outlives_both_deadlines(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, initialize_timeout=0.3, unauthenticated_timeout=0.3)
    async with running_gateway(settings) as gw, await TestClient.connect(gw.url) as client, \
                await TestClient.connect(gw.url) as witness:
        await client.initialize()
        await client.sign_up(name="stays")
        await witness.initialize()
        # The witness is closed at its deadline; by then the authorized socket has passed its own.
        assert (await close_of(witness.ws))[0] == 4003
        assert (await client.call("auth_get_sessions")).WhichOneof("result") == "sessions"


# -- HTTP endpoints --------------------------------------------------------------------------

def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


async def test_healthz_and_metrics(gateway: InProcessGateway) -> None:
    http = f"http://127.0.0.1:{gateway.port}"
    status, ctype, body = await http_get(http + "/healthz")
    assert status == 200 and ctype.startswith("application/json")
    assert json.loads(body)["status"] == "ok"

    async with await TestClient.connect(gateway.url) as client:
        assert error_code(await client.call("auth_get_sessions")) == 412
        await client.initialize()
        await client.sign_up(name="metered")
        await client.send(unserved(5))
        await client.result(5)
        _, _, text = await http_get(http + "/metrics")
        samples = metric_samples(text)
        assert ("gateway_connections_open", {}, 1.0) in samples
        assert ("gateway_requests_total", {"method": "core.initialize", "outcome": "ok"}, 1.0) in samples
        assert ("gateway_requests_total", {"method": "auth.getSessions", "outcome": "412"}, 1.0) in samples
        assert ("gateway_requests_total", {"method": "auth.signUp", "outcome": "ok"}, 1.0) in samples
        assert ("gateway_request_seconds_count", {"method": "auth.signUp"}, 1.0) in samples
        assert any(name == "gateway_request_seconds_bucket" and labels.get("method") == "auth.signUp"
                   for name, labels, _ in samples)

    async def closed_counted() -> bool:
        _, _, text = await http_get(http + "/metrics")
        samples = metric_samples(text)
        return (("gateway_closes_total", {"code": "1000"}, 1.0) in samples
                and ("gateway_connections_open", {}, 0.0) in samples)

    await eventually(closed_counted, what="the close to be counted")
    status, _, _ = await http_get(http + "/nothing-here")
    assert status == 404


# -- handshake policy ----------------------------------------------------------------------------

async def handshake_status(url: str, **kwargs: Any) -> int:
    try:
        async with websockets.connect(url, **kwargs):
            return 101
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


async def test_origin_allow_list(tmp_path: Path) -> None:
    allowed = "https://app.osmium.chat"
    async with running_gateway(gateway_settings(tmp_path, origins=(allowed,))) as gw:
        assert await handshake_status(gw.url, origin="https://evil.example") == 403
        assert await handshake_status(gw.url, origin=allowed) == 101
        assert await handshake_status(gw.url) == 101  # native apps send no Origin


async def test_missing_origin_can_be_refused(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, origins=("https://app.osmium.chat",), allow_missing_origin=False)
    async with running_gateway(settings) as gw:
        assert await handshake_status(gw.url) == 403
        assert await handshake_status(gw.url, origin="https://app.osmium.chat") == 101


async def test_per_ip_connection_cap(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path, max_connections_per_ip=2)) as gw:
        first = await websockets.connect(gw.url)
        second = await websockets.connect(gw.url)
        assert await handshake_status(gw.url) == 429
        await first.close()

        async def admitted() -> bool:
            return await handshake_status(gw.url) == 101
        await eventually(admitted, what="a freed slot")
        await second.close()


async def test_per_ip_cap_holds_for_simultaneous_handshakes(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path, max_connections_per_ip=3)) as gw:
        results = await asyncio.gather(*(websockets.connect(gw.url) for _ in range(12)),
                                       return_exceptions=True)
        opened = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, websockets.InvalidStatus)]
        try:
            assert len(opened) == 3 and len(refused) == 9, results
            assert all(r.response.status_code == 429 for r in refused)
        finally:
            for ws in opened:
                await ws.close()


# -- a client that stops reading -----------------------------------------------------------------

class RawClient:
    """A WebSocket client driven by hand (websockets' sans-I/O protocol over a plain socket) so
    that nothing reads from the socket unless the test says so."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small receive window
        self.sock.setblocking(False)
        self.url = url

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, ("127.0.0.1", port))
        self.protocol.send_request(self.protocol.connect())
        await self.flush()
        while self.protocol.state is not WsState.OPEN:
            data = await loop.sock_recv(self.sock, 4096)
            assert data, "the server hung up during the handshake"
            self.protocol.receive_data(data)
        assert self.protocol.handshake_exc is None
        self.protocol.events_received()

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        for chunk in self.protocol.data_to_send():
            if chunk:
                await loop.sock_sendall(self.sock, chunk)

    async def send(self, frames: list[bytes]) -> None:
        for data in frames:
            self.protocol.send_binary(data)
        await self.flush()

    async def read_to_close(self, timeout: float) -> list[bytes]:
        """Read everything the server sent, answer its close, return the binary messages."""
        loop = asyncio.get_running_loop()
        messages = []
        deadline = loop.time() + timeout
        while True:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20),
                                          max(0.01, deadline - loop.time()))
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            for frame in self.protocol.events_received():
                if frame.opcode is Opcode.BINARY:
                    messages.append(frame.data)
            await self.flush()
            if not data or self.protocol.state is WsState.CLOSED:
                return messages

    def close(self) -> None:
        self.sock.close()


async def test_client_that_stops_reading_is_closed_1013_with_a_bounded_queue(tmp_path: Path) -> None:
    limit = 64 * 1024
    async with running_gateway(gateway_settings(tmp_path, send_queue_bytes=limit,
                                                rate_limit_burst=1_000_000)) as gw:
        slow = RawClient(gw.url)
        await slow.connect(gw.port)
        await eventually(lambda: len(gw.server.connections) == 1, what="the server side")
        (conn,) = gw.server.connections
        # Requests before core.initialize each answer a ~60-byte 412 error: cheap to ask, and
        # together far more than the queue, the kernel buffers and the cap allow.
        ask = core_pb2.ClientMessage(id=1)
        ask.auth_get_sessions.SetInParent()
        batch = [ask.SerializeToString()] * 2000
        sent = 0
        peak = 0
        while conn.ws.state is WsState.OPEN:
            assert sent < 300_000, f"never closed; server write buffer at {peak} bytes"
            await slow.send(batch)
            sent += len(batch)
            # Let the server read and answer what is in flight, watching its outgoing buffer.
            for _ in range(20):
                peak = max(peak, conn.ws.transport.get_write_buffer_size())
                await asyncio.sleep(0)
        assert peak <= limit + 64  # the queue never held more than the cap (plus the close frame)
        assert sent * 60 > 4 * limit  # and far more than the cap was asked for

        # Another client is served while the slow one is being dropped.
        async with await TestClient.connect(gw.url) as other:
            await other.initialize()

        replies = await slow.read_to_close(TIMEOUT)
        slow.close()
        rcvd = slow.protocol.close_rcvd
        assert rcvd is not None and (rcvd.code, rcvd.reason) == (1013, "send queue full")
        assert 0 < len(replies) < sent
        assert all(core_pb2.ServerMessage.FromString(r).result.error.error_code == 412 for r in replies)


async def test_a_peer_that_never_answers_pings_is_closed_and_a_live_one_is_not(
        tmp_path: Path) -> None:
    """W5: dead peers and half-open TCP are found by server pings."""
    loop = asyncio.get_running_loop()
    settings = gateway_settings(tmp_path, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.3)
    async with running_gateway(settings) as gw, await TestClient.connect(gw.url) as live:
        await live.initialize()
        dead = RawClient(gw.url)
        await dead.connect(gw.port)  # never reads, so never answers a ping
        await dead.send([live.message("core_initialize").SerializeToString()])
        deadline = loop.time() + 5
        while len(gw.server.connections) > 1:
            assert loop.time() < deadline, "the silent peer was never closed"
            await asyncio.sleep(0.02)
        # What the server sent before dropping TCP: pings, then its close frame (1011). Read
        # it without answering: the server has hung up, so there is nobody to answer.
        while data := await asyncio.wait_for(loop.sock_recv(dead.sock, 1 << 16), TIMEOUT):
            dead.protocol.receive_data(data)
        dead.close()
        rcvd = dead.protocol.close_rcvd
        assert rcvd is not None and (rcvd.code, rcvd.reason) == (1011, "keepalive ping timeout")
        # The peer whose library answers pings was open all along and still is.
        assert (await live.call("auth_get_sessions")).error.error_code == 401


async def _raw_exchange(port: int, payload: bytes, timeout: float) -> bytes:
    """Send raw bytes on a fresh TCP connection; return all the server sends until it hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_a_handshake_that_never_completes_is_dropped(tmp_path: Path) -> None:
    """W3: a TCP connection that never finishes its HTTP upgrade is closed at the deadline."""
    async with running_gateway(gateway_settings(tmp_path, handshake_timeout=0.3)) as gw:
        started = time.monotonic()
        # Half a request line, then silence: the server must not wait for the rest forever.
        assert await _raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n", TIMEOUT) == b""
        assert time.monotonic() - started < TIMEOUT


async def test_oversized_or_too_many_headers_are_refused(tmp_path: Path) -> None:
    """W3: header limits hold at the handshake; a normal handshake still passes."""
    settings = gateway_settings(tmp_path, max_header_bytes=512, max_headers=8)
    async with running_gateway(settings) as gw:
        base = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
        long_line = base + b"X-Long: " + b"a" * 600 + b"\r\n\r\n"
        many = base + b"".join(b"X-%d: 1\r\n" % i for i in range(10)) + b"\r\n"
        for request in (long_line, many):
            answer = await _raw_exchange(gw.port, request, TIMEOUT)
            assert not answer.startswith(b"HTTP/1.1 101"), answer[:80]
        async with await TestClient.connect(gw.url) as client:
            await client.initialize()


async def test_node_connection_cap_answers_503(tmp_path: Path) -> None:
    async with running_gateway(gateway_settings(tmp_path, max_connections=2)) as gw:
        async with await TestClient.connect(gw.url) as a, await TestClient.connect(gw.url) as b:
            await a.initialize()
            await b.initialize()
            with pytest.raises(websockets.InvalidStatus) as refused:
                await TestClient.connect(gw.url)
            assert refused.value.response.status_code == 503
        # Room again once the others left.
        deadline = time.monotonic() + TIMEOUT
        while gw.server.connections:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        async with await TestClient.connect(gw.url) as c:
            await c.initialize()
