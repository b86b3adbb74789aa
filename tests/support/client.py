"""A small raw protocol client for tests: frames in, ServerMessages out, nothing hidden."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from gateway.proto import core_pb2

DEFAULT_TIMEOUT = 10.0


class TestClient:
    """One socket. ``call`` sends a request and returns its RPCResult; updates that arrive
    meanwhile are kept in ``updates`` in arrival order."""

    __test__ = False  # not a pytest class

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1000)
        self.updates: list[core_pb2.ServerMessage] = []
        self.server_ids: list[int] = []
        self.results: dict[int, core_pb2.RPCResult] = {}

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> TestClient:
        ws = await websockets.connect(url, max_size=None, open_timeout=10, **kwargs)
        return cls(ws)

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> TestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    def message(self, field: str, req_id: int | None = None, **fields: Any) -> core_pb2.ClientMessage:
        msg = core_pb2.ClientMessage(id=next(self.ids) if req_id is None else req_id)
        sub = getattr(msg, field)
        sub.SetInParent()
        for key, value in fields.items():
            if isinstance(value, list):
                getattr(sub, key).extend(value)
            else:
                setattr(sub, key, value)
        return msg

    async def request(self, msg: core_pb2.ClientMessage,
                      timeout: float = DEFAULT_TIMEOUT) -> core_pb2.RPCResult:
        await self.ws.send(msg.SerializeToString())
        return await self.result(msg.id, timeout)

    async def call(self, field: str, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> core_pb2.RPCResult:
        return await self.request(self.message(field, **fields), timeout)

    async def next_message(self, timeout: float = DEFAULT_TIMEOUT) -> core_pb2.ServerMessage:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, bytes), "the server sends binary frames only"
        msg = core_pb2.ServerMessage.FromString(raw)
        self.server_ids.append(msg.id)
        return msg

    async def result(self, req_id: int, timeout: float = DEFAULT_TIMEOUT) -> core_pb2.RPCResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while req_id not in self.results:
            msg = await self.next_message(max(0.01, deadline - loop.time()))
            if msg.WhichOneof("message") == "result":
                self.results[msg.result.req_id] = msg.result
            else:
                self.updates.append(msg)
        return self.results.pop(req_id)

    async def next_update(self, timeout: float = DEFAULT_TIMEOUT) -> core_pb2.ServerMessage:
        if self.updates:
            return self.updates.pop(0)
        while True:
            msg = await self.next_message(timeout)
            if msg.WhichOneof("message") == "update":
                return msg
            self.results[msg.result.req_id] = msg.result

    async def closed(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int | None, str | None]:
        """Read until the server closes, within ``timeout`` in all; return (close code, reason)
        as the client received them. What arrives meanwhile is kept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                msg = await self.next_message(max(0.01, deadline - loop.time()))
                if msg.WhichOneof("message") == "update":
                    self.updates.append(msg)
                else:
                    self.results[msg.result.req_id] = msg.result
        except websockets.ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)

    # -- the usual steps ----------------------------------------------------------------------
    async def initialize(self, client_id: int = 1, device_type: str = "linux",
                         device_version: str = "6.1", app_version: str = "1.0.0") -> core_pb2.RPCResult:
        res = await self.call("core_initialize", client_id=client_id, device_type=device_type,
                              device_version=device_version, app_version=app_version)
        assert res.WhichOneof("result") == "initialized", res
        return res

    async def sign_up(self, name: str = "user", email: str | None = None,
                      password: str | None = None) -> core_pb2.RPCResult:
        fields: dict[str, Any] = {"name": name}
        if email is not None:
            fields["email"] = email
        if password is not None:
            fields["password"] = password
        return await self.call("auth_sign_up", **fields)

    async def sign_in(self, email: str, password: str) -> core_pb2.RPCResult:
        return await self.call("auth_sign_in", email=email, password=password)

    async def authorize(self, token: str) -> core_pb2.RPCResult:
        return await self.call("auth_authorize", token=token)


def error_code(result: core_pb2.RPCResult) -> int:
    assert result.WhichOneof("result") == "error", f"expected an error, got {result}"
    return result.error.error_code
