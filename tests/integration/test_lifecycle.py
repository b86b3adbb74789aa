"""A gateway process under signals: SIGTERM drains with 1012, answers what is in flight, exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import websockets

from gateway.proto import core_pb2
from tests.integration.test_transport import RawClient
from tests.support.client import TestClient
from tests.support.gateway import GatewayProcess

TIMEOUT = 10.0
SHUTDOWN_DEADLINE = 5.0


def unserved(req_id: int) -> bytes:
    """ClientMessage{id, field 4 = {}}: answered 501 at once, in order with the socket's frames."""
    assert req_id < 128
    return bytes([0x08, req_id, 0x22, 0x00])


async def close_code(client: TestClient) -> int | None:
    """Read until the server closes; keep results that arrive meanwhile; the close code received."""
    try:
        while True:
            msg = await client.next_message(TIMEOUT)
            if msg.WhichOneof("message") == "result":
                client.results[msg.result.req_id] = msg.result
    except websockets.ConnectionClosed:
        pass
    rcvd = client.ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


async def test_sigterm_closes_every_socket_1012_answers_in_flight_and_exits_0(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path, "--bcrypt-cost", "12", "--hash-threads", "1",
                             "--shutdown-deadline", str(SHUTDOWN_DEADLINE))
    await gateway.astart()
    clients: list[TestClient] = []
    try:
        for _ in range(5):
            client = await TestClient.connect(gateway.url)
            clients.append(client)
            await client.initialize()
        signing = clients[0]
        await signing.call("auth_sign_up", name="warm", email="warm@example.com",
                           password="a long enough password")  # the first hash loads bcrypt
        # A sign-up hashing at cost 12 (about a quarter of a second) ...
        slow = signing.message("auth_sign_up", name="late", email="late@example.com",
                               password="a long enough password")
        await signing.send(slow.SerializeToString())
        # ... is in progress once a request sent after it has been answered (sign-ups run in
        # their own task; the 501 is answered in order, right away).
        await signing.send(unserved(5))
        await signing.result(5)
        assert slow.id not in signing.results, "the sign-up finished too soon to be in flight"

        gateway.signal(signal.SIGTERM)
        sent_at = time.monotonic()
        codes = await asyncio.gather(*(close_code(c) for c in clients))
        assert codes == [1012] * len(clients)

        reply = signing.results.get(slow.id)
        assert reply is not None, "the request in flight at SIGTERM got no reply"
        assert reply.WhichOneof("result") == "authorization", reply
        assert reply.authorization.user.name == "late"

        assert await gateway.await_exit(SHUTDOWN_DEADLINE + 5) == 0, gateway.log()
        assert time.monotonic() - sent_at < SHUTDOWN_DEADLINE + 2
        assert "Traceback" not in gateway.log()
    finally:
        for client in clients:
            await client.close()
        gateway.kill()


async def test_sigterm_on_an_idle_node_exits_and_stops_listening(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path, "--shutdown-deadline", str(SHUTDOWN_DEADLINE))
    await gateway.astart()
    try:
        async with await TestClient.connect(gateway.url) as client:
            await client.initialize()
            gateway.signal(signal.SIGTERM)
            assert await close_code(client) == 1012
        assert await gateway.await_exit(SHUTDOWN_DEADLINE + 5) == 0, gateway.log()
        # Once gone, nothing listens any more.
        try:
            await websockets.connect(gateway.url, open_timeout=2)
        except OSError:
            pass
        else:
            raise AssertionError("the gateway still accepts connections after SIGTERM")
    finally:
        gateway.kill()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_slow_reader_is_closed_1013_and_server_memory_stays_flat(tmp_path: Path) -> None:
    # A separate process, so that its resident memory is the server's alone.
    # The raw client reads nothing until it has sent everything, so it answers no ping and
    # no close frame meanwhile: pings off and a long close timeout, or a loaded machine would
    # see the server give up on it (1011, then TCP reset) before the send queue is tested.
    gateway = GatewayProcess(tmp_path, "--send-queue-bytes", str(64 * 1024),
                             "--close-timeout", "120", "--ping-interval", "3600",
                             "--rate-limit-burst", "1000000")
    await gateway.astart()
    try:
        assert gateway.proc is not None
        pid = gateway.proc.pid
        ask = core_pb2.ClientMessage(id=1)
        ask.auth_get_sessions.SetInParent()  # unauthorized: a ~60-byte error reply each
        frame = ask.SerializeToString()
        hello = core_pb2.ClientMessage(id=2)
        hello.core_initialize.SetInParent()  # so no initialize deadline closes it meanwhile
        async with await TestClient.connect(gateway.url) as warm:  # warm the allocator up first
            for _ in range(3):
                for _ in range(2000):
                    await warm.send(frame)
                for _ in range(2000):
                    await warm.next_message()
        baseline = peak = rss_bytes(pid)

        slow = RawClient(gateway.url)
        await slow.connect(gateway.port)
        await slow.send([hello.SerializeToString()])
        asked = 0
        # Up to ~24 MB of replies, which a server without the cap would hold in memory. With
        # the cap it closes on this client (and says so in its log) long before; from then on
        # it owes the client nothing, so the flood stops there.
        while asked < 400_000 and "send queue full" not in gateway.log():
            await asyncio.wait_for(slow.send([frame] * 4000), 30)
            asked += 4000
            peak = max(peak, rss_bytes(pid))
        deadline = time.monotonic() + 30
        while "send queue full" not in gateway.log():  # it may still be working through input
            assert time.monotonic() < deadline, gateway.log()[-2000:]
            await asyncio.sleep(0.05)
            peak = max(peak, rss_bytes(pid))
        async with await TestClient.connect(gateway.url) as other:  # others are still served
            await other.initialize()
        replies = await slow.read_to_close(TIMEOUT)
        slow.close()
        peak = max(peak, rss_bytes(pid))

        rcvd = slow.protocol.close_rcvd
        assert rcvd is not None and rcvd.code == 1013, gateway.log()[-2000:]
        assert len(replies) < asked // 2  # most replies were never queued for it
        assert peak - baseline < 10 * 1024 * 1024, f"server grew by {(peak - baseline) >> 20} MiB"
    finally:
        gateway.signal(signal.SIGTERM)
        await gateway.await_exit()
        gateway.kill()
