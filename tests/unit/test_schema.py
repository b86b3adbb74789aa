"""The wire contract: PROTOCOL.md §5 bytes, §3 field numbers, and generated code in step with schema/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.proto import core_pb2, updates_pb2

ROOT = Path(__file__).resolve().parents[2]
REQ_ID = 1234567890


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# -- PROTOCOL.md §5, byte for byte ---------------------------------------------------------------

def test_keepalive_bytes() -> None:
    assert core_pb2.ClientMessage(id=1).SerializeToString() == hexbytes("08 01")


def test_authorize_request_bytes() -> None:
    msg = core_pb2.ClientMessage(id=REQ_ID)
    msg.auth_authorize.token = "abc"
    wire = hexbytes("08 d2 85 d8 cc 04 a2 01 05 2a 03 61 62 63")
    assert msg.SerializeToString() == wire
    assert core_pb2.ClientMessage.FromString(wire) == msg


def test_empty_reply_bytes() -> None:
    msg = core_pb2.ServerMessage()
    msg.result.req_id = REQ_ID
    assert msg.SerializeToString() == hexbytes("1a 06 08 d2 85 d8 cc 04")


def test_error_reply_bytes() -> None:
    msg = core_pb2.ServerMessage()
    msg.result.req_id = REQ_ID
    msg.result.error.error_code = 1
    msg.result.error.error_message = "x"
    assert msg.SerializeToString() == hexbytes("1a 0d 08 d2 85 d8 cc 04 12 05 08 01 12 01 78")


def test_fixed64_ids_are_eight_little_endian_bytes() -> None:
    update = updates_pb2.Update()
    update.session_deleted.session_id = 0x0102030405060708
    assert update.SerializeToString() == hexbytes("72 09 09 08 07 06 05 04 03 02 01")


# -- PROTOCOL.md §3: the numbers of every served member -----------------------------------------

CLIENT_MESSAGE = [
    ("id", 1),
    ("core_initialize", 19), ("auth_sign_up", 3), ("auth_sign_in", 2), ("auth_authorize", 20),
    ("auth_get_sessions", 41), ("auth_revoke_sessions", 42), ("auth_reset_password", 45),
    ("auth_verify_email", 46), ("auth_resend_email_verification", 47),
    ("auth_lookup_invite", 15), ("auth_use_invite", 16), ("chats_create_chat_invite", 14),
    ("chats_list_chat_invites", 61), ("chats_delete_chat_invite", 59), ("chats_create_chat", 50),
    ("communities_create_community", 6), ("communities_get_communities", 7),
    ("friends_get_relationships", 10), ("settings_get_account", 75),
    ("settings_change_password", 76), ("settings_change_email", 77), ("settings_setup_totp", 83),
    ("settings_delete_account", 85),
]

RPC_RESULT = [
    ("req_id", 1), ("error", 2),
    ("initialized", 14), ("authorization", 4), ("sessions", 19), ("invite_preview", 23),
    ("created_invite", 11), ("invite_list", 27), ("group", 22), ("communities", 5),
    ("relationships", 8), ("account", 32), ("totp", 36),
]

UPDATE = [
    ("session_deleted", 14), ("user", 5), ("group", 20), ("community", 6),
    ("update_user_relationship", 18),
]

SERVER_MESSAGE = [("id", 1), ("update", 2), ("result", 3)]


@pytest.mark.parametrize("message, expected", [
    (core_pb2.ClientMessage, CLIENT_MESSAGE),
    (core_pb2.RPCResult, RPC_RESULT),
    (updates_pb2.Update, UPDATE),
    (core_pb2.ServerMessage, SERVER_MESSAGE),
], ids=["ClientMessage", "RPCResult", "Update", "ServerMessage"])
def test_served_members_have_the_protocol_numbers(message: type, expected: list[tuple[str, int]]) -> None:
    fields = message.DESCRIPTOR.fields_by_name
    actual = [(name, fields[name].number if name in fields else None) for name, _ in expected]
    assert actual == expected


def test_client_message_serves_nothing_beyond_section_3() -> None:
    # Every other number of the public ClientMessage stays unknown, so it answers "not implemented"
    # instead of being decoded into something we never wrote a handler for.
    served = {name for name, _ in CLIENT_MESSAGE}
    assert set(core_pb2.ClientMessage.DESCRIPTOR.fields_by_name) == served
    oneof = core_pb2.ClientMessage.DESCRIPTOR.oneofs_by_name["message"]
    assert {f.name for f in oneof.fields} == served - {"id"}


def test_authorize_token_is_field_5() -> None:
    token = core_pb2.ClientMessage.DESCRIPTOR.fields_by_name["auth_authorize"].message_type
    assert [(f.name, f.number) for f in token.fields] == [("token", 5)]


# -- generated code is up to date -------------------------------------------------------------

def test_generated_code_matches_schema(tmp_path: Path) -> None:
    out = tmp_path / "proto"
    run = subprocess.run([sys.executable, str(ROOT / "schema" / "generate.py"), str(out)],
                         check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    committed = ROOT / "gateway" / "proto"
    generated = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    present = {p.name: p.read_bytes() for p in committed.iterdir() if p.is_file()}
    assert generated, "generate.py wrote nothing"
    assert sorted(present) == sorted(generated), "gateway/proto has missing or extra files: run `make proto`"
    stale = sorted(name for name in generated if generated[name] != present[name])
    assert not stale, f"gateway/proto is stale for {stale}: run `make proto`"
