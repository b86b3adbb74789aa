"""The frame codec: request ids read from broken frames, decoding limits, reply encoding."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidArgument, UndecodableFrame
from gateway.proto import auth_pb2, chats_pb2, core_pb2, updates_pb2
from gateway.protocol import codec

REQ_ID_WIRE = bytes.fromhex("d285d8cc04")  # 1234567890


@pytest.mark.parametrize("data, expected", [
    (b"", None),
    (b"\x08\x01", 1),
    (b"\x08" + REQ_ID_WIRE, 1234567890),
    (b"\x08" + REQ_ID_WIRE + b"\x12\x05\x0a", 1234567890),            # id, then a cut-off field
    (b"\x12\x00\x08\x05", 5),                                            # length-delimited first
    (b"\x11" + bytes(8) + b"\x08\x07", 7),                               # fixed64 first
    (b"\x15" + bytes(4) + b"\x08\x07", 7),                               # fixed32 first
    (b"\x10\x96\x01\x08\x2a", 42),                                       # another varint first
    (b"\x08\x85\x80\x80\x80\x10", 5),                                    # 2**32 + 5: uint32 keeps 5
    (b"\x08\xff", None),                                                 # id varint never ends
    (b"\x08" + b"\xff" * 12, None),                                      # varint past 10 bytes
    (b"\x0a\x01x", None),                                                # field 1 but not a varint
    (b"\x12\x10ab\x08\x01", None),                                       # length jumps past the end
    (b"\x0b\x08\x01", None),                                             # group start: give up
    (b"\x0f\x08\x01", None),                                             # wire type 7
    (b"\xff\xff\xff", None),
])
def test_read_request_id(data: bytes, expected: int | None) -> None:
    assert codec.read_request_id(data) == expected


def test_decode_client_message_splits_malformed_from_undecodable() -> None:
    msg = codec.decode_client_message(b"\x08" + REQ_ID_WIRE + b"\xa2\x01\x05\x2a\x03abc")
    assert msg.id == 1234567890 and msg.auth_authorize.token == "abc"
    with pytest.raises(codec.MalformedFrame) as bad:
        codec.decode_client_message(b"\x08\x2a\xa2\x01\x05\x2a\x03ab")
    assert bad.value.req_id == 42
    with pytest.raises(UndecodableFrame):
        codec.decode_client_message(b"\xa2\x01\x05\x2a\x03ab")


def test_check_limits_strings_counted_in_characters() -> None:
    ok = auth_pb2.SignIn(email="é" * 4096, password="x")  # 8192 UTF-8 bytes, 4096 characters
    codec.check_limits(ok)
    with pytest.raises(InvalidArgument) as info:
        codec.check_limits(auth_pb2.SignIn(email="a" * 4097))
    assert info.value.code == 400 and "email" in info.value.message
    codec.check_limits(auth_pb2.SignIn(email="a" * 11), max_string=11)
    with pytest.raises(InvalidArgument):
        codec.check_limits(auth_pb2.SignIn(email="a" * 12), max_string=11)


def test_check_limits_repeated_counts() -> None:
    codec.check_limits(auth_pb2.RevokeSessions(session_ids=range(256)))
    with pytest.raises(InvalidArgument) as info:
        codec.check_limits(auth_pb2.RevokeSessions(session_ids=range(257)))
    assert info.value.code == 400 and "session_ids" in info.value.message


def test_check_limits_walks_into_nested_messages() -> None:
    create = chats_pb2.CreateChat(name="g")
    for i in range(257):
        create.users.add(user_id=i)
    with pytest.raises(InvalidArgument):
        codec.check_limits(create)
    nested = core_pb2.ClientMessage(id=1)
    nested.auth_reset_password.email = "a@b.c"
    nested.auth_reset_password.confirm.new_password = "p" * 5000
    with pytest.raises(InvalidArgument) as info:
        codec.check_limits(nested.auth_reset_password)
    assert "new_password" in info.value.message


def test_encoders_produce_server_messages() -> None:
    res = core_pb2.ServerMessage.FromString(codec.encode_result(3, 99))
    assert (res.id, res.result.req_id, res.result.WhichOneof("result")) == (3, 99, None)
    err = core_pb2.ServerMessage.FromString(codec.encode_error(4, 99, 412, "later"))
    assert (err.id, err.result.error.error_code, err.result.error.error_message) == (4, 412, "later")
    update = updates_pb2.Update()
    update.session_deleted.session_id = 2**63 + 1
    pushed = core_pb2.ServerMessage.FromString(codec.encode_update(5, codec.serialize_update(update)))
    assert pushed.id == 5 and pushed.update == update
    # Built by hand, the update frame must equal what protobuf itself would write.
    assert codec.encode_update(5, update.SerializeToString()) == core_pb2.ServerMessage(
        id=5, update=update).SerializeToString()
    assert codec.encode_update(300, b"") == core_pb2.ServerMessage(
        id=300, update=updates_pb2.Update()).SerializeToString()
