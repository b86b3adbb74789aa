"""The baseline: a bare websockets + protobuf server that answers every ClientMessage with an
empty RPCResult carrying its id. Same library, same loop, same framing as the gateway, and
nothing else — the ceiling a gateway request can approach."""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve

from gateway.proto import core_pb2


async def handler(ws: ServerConnection) -> None:
    async for frame in ws:
        msg = core_pb2.ClientMessage.FromString(frame)  # type: ignore[arg-type]
        out = core_pb2.ServerMessage()
        out.result.req_id = msg.id
        await ws.send(out.SerializeToString())


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
