"""Frame codec with limits: ClientMessage bytes in, ServerMessage bytes out.

Decoding is bounded in four ways (SECURITY.md W8): the transport caps the frame size before we
see it; our schema has no recursive messages, so nesting depth is fixed by the schema (unknown
fields are kept as opaque bytes, never parsed); repeated fields and strings are checked against
limits after decoding; and every decode failure becomes a ``Malformed`` reply or a close.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from gateway.errors import InvalidArgument, UndecodableFrame
from gateway.proto import core_pb2, updates_pb2

#: Defaults for any string / repeated field; methods may be stricter in their handlers.
MAX_STRING_CHARS = 4096
MAX_REPEATED = 256
#: A frame this short cannot hold a string or a repeated field over the limits (each repeated
#: item takes at least one byte), so the walk over its fields can be skipped.
SMALLEST_OVER_LIMIT = min(MAX_STRING_CHARS, MAX_REPEATED)


def read_request_id(frame: bytes) -> int | None:
    """Find field 1 (varint) in a frame that did not decode, walking the wire format.

    Returns None when the walk meets something unreadable before finding the id.
    """
    pos, end = 0, len(frame)
    while pos < end:
        key, pos = _varint(frame, pos)
        if key is None:
            return None
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(frame, pos)
            if value is None:
                return None
            if field == 1:
                return value & 0xFFFFFFFF
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(frame, pos)
            if length is None:
                return None
            pos += length
        else:
            return None
    return None


def _varint(buf: bytes, pos: int) -> tuple[int | None, int]:
    result = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        b = buf[i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i + 1
        shift += 7
    return None, pos


class MalformedFrame(Exception):
    """A frame that is not a ClientMessage but whose request id could be read."""

    def __init__(self, req_id: int) -> None:
        super().__init__(req_id)
        self.req_id = req_id


def decode_client_message(frame: bytes) -> core_pb2.ClientMessage:
    """Decode one frame; raise MalformedFrame (id readable) or UndecodableFrame (no id)."""
    try:
        return core_pb2.ClientMessage.FromString(frame)
    except DecodeError:
        req_id = read_request_id(frame)
        if req_id is None:
            raise UndecodableFrame() from None
        raise MalformedFrame(req_id) from None


def check_limits(msg: Message, max_string: int = MAX_STRING_CHARS,
                 max_repeated: int = MAX_REPEATED) -> None:
    """Refuse over-long strings and over-full repeated fields anywhere in ``msg``."""
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            if len(value) > max_repeated:
                raise InvalidArgument(f"{fd.name}: at most {max_repeated} items")
            if fd.message_type is not None:
                for item in value:
                    check_limits(item, max_string, max_repeated)
            elif fd.type == fd.TYPE_STRING:
                for item in value:
                    if len(item) > max_string:
                        raise InvalidArgument(f"{fd.name}: at most {max_string} characters")
        elif fd.message_type is not None:
            check_limits(value, max_string, max_repeated)
        elif fd.type == fd.TYPE_STRING and len(value) > max_string:
            raise InvalidArgument(f"{fd.name}: at most {max_string} characters")


def encode_result(msg_id: int, req_id: int, field: str | None = None,
                  payload: Message | None = None) -> bytes:
    out = core_pb2.ServerMessage(id=msg_id)
    result = out.result
    result.req_id = req_id
    if field is not None and payload is not None:
        getattr(result, field).CopyFrom(payload)
    return out.SerializeToString()


def encode_error(msg_id: int, req_id: int, code: int, message: str) -> bytes:
    out = core_pb2.ServerMessage(id=msg_id)
    out.result.req_id = req_id
    out.result.error.error_code = code
    out.result.error.error_message = message
    return out.SerializeToString()


def encode_update(msg_id: int, update: bytes) -> bytes:
    """Wrap a serialized Update. Concatenating the id field with a length-delimited field 2
    avoids re-parsing the update bytes that the registry already serialized."""
    return _field_varint(1, msg_id) + _field_bytes(2, update) if msg_id else _field_bytes(2, update)


def serialize_update(update: updates_pb2.Update) -> bytes:
    return update.SerializeToString()


def _field_varint(field: int, value: int) -> bytes:
    return encode_varint(field << 3) + encode_varint(value)


def _field_bytes(field: int, data: bytes) -> bytes:
    return encode_varint(field << 3 | 2) + encode_varint(len(data)) + data


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)
