"""The sans-I/O connection core: bytes and a timestamp in, events and reply bytes out.

No sockets and no sleeping: ``now`` is a number the tests move forward.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import CloseCode, ErrorCode, UndecodableFrame
from gateway.proto import core_pb2, updates_pb2
from gateway.protocol.connection import (
    INITIALIZE,
    ClientInfo,
    Close,
    ConnectionCore,
    Limits,
    Reply,
    Request,
    State,
    entrypoints_message,
)
from gateway.rpc.table import ROUTES

T0 = 1000.0
REQ_ID = 1234567890
REQ_ID_WIRE = bytes.fromhex("d285d8cc04")


def core(now: float = T0, **limits: Any) -> ConnectionCore:
    return ConnectionCore(ROUTES, Limits(**limits), now)


def frame(field: str, req_id: int, **fields: Any) -> bytes:
    msg = core_pb2.ClientMessage(id=req_id)
    sub = getattr(msg, field)
    sub.SetInParent()
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(sub, key).extend(value)
        else:
            setattr(sub, key, value)
    return msg.SerializeToString()


def server_message(data: bytes) -> core_pb2.ServerMessage:
    return core_pb2.ServerMessage.FromString(data)


def result_of(event: object) -> tuple[int, core_pb2.RPCResult]:
    """(ServerMessage.id, RPCResult) of a Reply the core produced itself."""
    assert isinstance(event, Reply), f"expected a Reply, got {event!r}"
    msg = server_message(event.data)
    assert msg.WhichOneof("message") == "result"
    return msg.id, msg.result


def error_of(event: object) -> tuple[int, int, str]:
    """(req_id, error_code, error_message) of an error Reply."""
    _, res = result_of(event)
    assert res.WhichOneof("result") == "error", res
    return res.req_id, res.error.error_code, res.error.error_message


def initialized(now: float = T0, **limits: Any) -> ConnectionCore:
    c = core(now, **limits)
    event = c.receive(frame(INITIALIZE, 1, client_id=2, device_type="linux"), now)
    assert isinstance(event, Reply)
    assert c.state is State.INITIALIZED
    return c


def authorized(now: float = T0, **limits: Any) -> ConnectionCore:
    c = initialized(now, **limits)
    c.authorized(user_id=7, session_id=8, now=now)
    return c


# -- the state machine --------------------------------------------------------------------------

def test_new_initialized_authorized_and_back() -> None:
    c = core()
    assert c.state is State.NEW
    event = c.receive(frame(INITIALIZE, 5, client_id=2, device_type="linux", device_version="6.1",
                            app_version="1.2.3", no_subscribe=True), T0)
    msg_id, res = result_of(event)
    assert (msg_id, res.req_id, res.WhichOneof("result")) == (1, 5, "initialized")
    assert isinstance(event, Reply) and event.method == "core.initialize" and event.code == 0
    assert c.state is State.INITIALIZED
    assert c.client == ClientInfo(2, "linux", "6.1", "1.2.3", True)

    c.authorized(user_id=11, session_id=12, now=T0 + 1)
    assert (c.state, c.user_id, c.session_id) == (State.AUTHORIZED, 11, 12)

    c.unauthorized(T0 + 2)
    assert (c.state, c.user_id, c.session_id) == (State.INITIALIZED, 0, 0)


def test_authorized_is_illegal_before_initialize() -> None:
    c = core()
    with pytest.raises(RuntimeError):
        c.authorized(1, 2, T0)
    assert c.state is State.NEW


def test_closed_core_admits_nothing_but_still_answers_every_request() -> None:
    c = authorized()
    c.closed(ErrorCode.UNAUTHENTICATED, "session revoked")
    assert c.state is State.CLOSED
    event = c.receive(frame("auth_get_sessions", 9), T0)
    assert not isinstance(event, Request)  # nothing is admitted...
    assert error_of(event) == (9, 401, "session revoked")  # ...and the request is answered
    assert c.inflight == 0
    assert error_of(c.receive(b"\x08\x0a\x12\xff", T0))[:2] == (10, 401)  # malformed, id 10
    assert c.receive(bytes.fromhex("0801"), T0) is None  # a keepalive still gets nothing
    assert c.receive(b"\xff\xff", T0) is None  # nor garbage without an id
    c.closed()  # closing again keeps the first reason
    assert error_of(c.receive(frame("auth_get_sessions", 11), T0))[1] == 401
    assert c.next_deadline() is None


def test_initialized_carries_configured_entrypoints() -> None:
    init = entrypoints_message(("gw1.example:443:2", "gw2.example:8443"), "vapid-key")
    c = ConnectionCore(ROUTES, Limits(), T0, init)
    _, res = result_of(c.receive(frame(INITIALIZE, 3), T0))
    eps = res.initialized.entrypoints.entrypoints
    assert [(e.hostname, e.port, e.region) for e in eps] == [("gw1.example", 443, 2),
                                                             ("gw2.example", 8443, 0)]
    assert res.initialized.vapid_public_key == "vapid-key"
    with pytest.raises(ValueError):
        entrypoints_message(("no-port",), None)


# -- keepalive, unknown members, malformed input -------------------------------------------------

@pytest.mark.parametrize("make", [core, initialized, authorized], ids=["new", "initialized", "authorized"])
def test_keepalive_gets_no_reply(make: Any) -> None:
    c = make()
    assert c.receive(b"\x08\x01", T0) is None
    # A keepalive takes no ServerMessage.id: the next reply still gets the next number.
    before = c._next_msg_id
    c.receive(b"\x08\x01", T0)
    assert c._next_msg_id == before


def test_keepalives_do_not_use_up_the_rate_limit() -> None:
    # After N reconnects the real client sends N keepalives per 30 s: they must not throttle it.
    c = authorized(rate_requests=1, rate_window=60.0, rate_burst=2)  # initialize took one token
    for _ in range(50):
        assert c.receive(b"\x08\x01", T0) is None
    assert isinstance(c.receive(frame("auth_get_sessions", 2), T0), Request)


def test_unknown_field_number_answers_not_implemented() -> None:
    # Field 4 is messages_send_message: reserved in our schema, so it decodes as an unknown field.
    c = initialized()
    data = b"\x08" + REQ_ID_WIRE + b"\x22\x00"
    assert error_of(c.receive(data, T0)) == (REQ_ID, ErrorCode.NOT_IMPLEMENTED, "not implemented")
    assert c.state is State.INITIALIZED


def test_unknown_field_with_payload_answers_not_implemented() -> None:
    c = authorized()
    send_message = b"\x0a\x05hello"  # some SendMessage body; the server never parses it
    data = b"\x08\x2a" + b"\x22" + bytes([len(send_message)]) + send_message
    assert error_of(c.receive(data, T0)) == (42, 501, "not implemented")


@pytest.mark.parametrize("data, req_id", [
    (b"\x08\x07\x12\x05\x0a\x03ab", 7),                   # auth_sign_in cut short
    (b"\x08\x09\xa2\x01\x03\x2a\x01\xff", 9),            # Authorize.token is not UTF-8
    (b"\x08" + REQ_ID_WIRE + b"\x9a\x01\x02\x08", REQ_ID),  # Initialize with a truncated varint
    (b"\x08\x03\x0b", 3),                                # a group start that never ends
])
def test_malformed_frame_with_readable_id_answers_400(data: bytes, req_id: int) -> None:
    c = initialized()
    assert error_of(c.receive(data, T0)) == (req_id, ErrorCode.INVALID_ARGUMENT, "malformed")
    assert c.state is State.INITIALIZED


@pytest.mark.parametrize("data", [
    b"\xff",
    b"\x12\x05ab",            # auth_sign_in cut short, no id
    b"\x08",                  # a key with no value
    b"\x08\xff\xff",          # id varint never ends
    b"\x0f\x01",              # wire type 7
])
def test_undecodable_frame_without_id_raises_close_1007(data: bytes) -> None:
    c = initialized()
    with pytest.raises(UndecodableFrame) as info:
        c.receive(data, T0)
    assert info.value.close_code == CloseCode.INVALID_PAYLOAD == 1007


# -- request ids and ServerMessage ids -----------------------------------------------------------

def test_request_ids_are_echoed() -> None:
    c = authorized()
    for req_id in (0, 1, REQ_ID, 0xFFFFFFFF):
        event = c.receive(frame("auth_get_sessions", req_id), T0)
        assert isinstance(event, Request) and event.req_id == req_id
        assert event.field == "auth_get_sessions" and event.route.name == "auth.getSessions"
        assert server_message(c.reply(event, None, None)).result.req_id == req_id
        event = c.receive(frame("auth_get_sessions", req_id), T0)
        assert isinstance(event, Request)
        failed = server_message(c.fail(event, 404, "nope")).result
        assert (failed.req_id, failed.error.error_code, failed.error.error_message) == (req_id, 404, "nope")


def test_server_message_ids_count_results_and_updates_together() -> None:
    c = core()
    ids = [result_of(c.receive(frame(INITIALIZE, 10), T0))[0]]                  # Initialized
    ids.append(result_of(c.receive(frame(INITIALIZE, 11), T0))[0])              # 412
    c.authorized(1, 2, T0)
    update = updates_pb2.Update()
    update.session_deleted.session_id = 99
    pushed = server_message(c.update(update.SerializeToString()))
    assert pushed.update.session_deleted.session_id == 99
    ids.append(pushed.id)
    request = c.receive(frame("auth_get_sessions", 12), T0)
    assert isinstance(request, Request)
    ids.append(server_message(c.reply(request, None, None)).id)
    ids.append(server_message(c.update(update.SerializeToString())).id)
    assert ids == [1, 2, 3, 4, 5]


# -- deadlines -----------------------------------------------------------------------------------

def test_initialize_deadline_closes_with_4002() -> None:
    c = core(T0, initialize_timeout=10.0)
    assert c.next_deadline() == T0 + 10.0
    assert c.on_deadline(T0 + 9.999) is None
    event = c.on_deadline(T0 + 10.0)
    assert isinstance(event, Close) and event.code == CloseCode.INITIALIZE_TIMEOUT == 4002


def test_unauthenticated_deadline_closes_with_4003_and_counts_from_initialize() -> None:
    c = core(T0, initialize_timeout=10.0, unauthenticated_timeout=600.0)
    c.receive(frame(INITIALIZE, 1), T0 + 4)
    assert c.next_deadline() == T0 + 4 + 600.0
    assert c.on_deadline(T0 + 10.0) is None  # the initialize deadline no longer applies
    assert c.on_deadline(T0 + 603.9) is None
    event = c.on_deadline(T0 + 604.0)
    assert isinstance(event, Close) and event.code == CloseCode.AUTHENTICATION_TIMEOUT == 4003


def test_authorized_connection_has_no_deadline_until_signed_out() -> None:
    c = initialized(T0, unauthenticated_timeout=60.0)
    c.authorized(1, 2, T0 + 30)
    assert c.next_deadline() is None
    assert c.on_deadline(T0 + 10_000) is None
    c.unauthorized(T0 + 10_000)
    assert c.next_deadline() == T0 + 10_060  # a fresh unauthenticated period starts
    assert isinstance(c.on_deadline(T0 + 10_060), Close)


# -- admission: state, auth, in-flight cap, rate limit, field limits ---------------------------------

@pytest.mark.parametrize("field", sorted(f for f in ROUTES if f != INITIALIZE))
def test_every_method_before_initialize_answers_412(field: str) -> None:
    c = core()
    req_id, code, message = error_of(c.receive(frame(field, 77), T0))
    assert (req_id, code) == (77, ErrorCode.FAILED_PRECONDITION)
    assert "initialize" in message
    assert c.state is State.NEW


@pytest.mark.parametrize("make", [initialized, authorized], ids=["initialized", "authorized"])
def test_second_initialize_answers_412(make: Any) -> None:
    c = make()
    state = c.state
    assert error_of(c.receive(frame(INITIALIZE, 3), T0))[:2] == (3, 412)
    assert c.state is state


@pytest.mark.parametrize("field", sorted(f for f, r in ROUTES.items() if r.needs_auth))
def test_auth_only_method_before_authorization_answers_401(field: str) -> None:
    c = initialized()
    assert error_of(c.receive(frame(field, 5), T0))[:2] == (5, ErrorCode.UNAUTHENTICATED)
    c.authorized(1, 2, T0)
    assert isinstance(c.receive(frame(field, 6), T0), Request)


@pytest.mark.parametrize("field", sorted(f for f, r in ROUTES.items()
                                         if not r.needs_auth and f != INITIALIZE))
def test_open_method_is_admitted_before_authorization(field: str) -> None:
    c = initialized()
    event = c.receive(frame(field, 5), T0)
    assert isinstance(event, Request) and event.field == field


def test_inflight_cap_answers_429_until_a_reply_goes_out() -> None:
    c = authorized(max_inflight=2)
    first = c.receive(frame("auth_get_sessions", 1), T0)
    second = c.receive(frame("auth_get_sessions", 2), T0)
    assert isinstance(first, Request) and isinstance(second, Request)
    assert c.inflight == 2
    req_id, code, message = error_of(c.receive(frame("auth_get_sessions", 3), T0))
    assert (req_id, code) == (3, ErrorCode.RATE_LIMITED)
    assert "retry" in message
    c.reply(first, None, None)
    assert c.inflight == 1
    assert isinstance(c.receive(frame("auth_get_sessions", 4), T0), Request)


def test_rate_limit_bucket_refuses_then_refills_with_time() -> None:
    # 6 requests per 60 s = one token every 10 s, bursts of 4 (initialize takes the first).
    c = authorized(rate_requests=6, rate_window=60.0, rate_burst=4)

    def attempt(req_id: int, now: float) -> object:
        event = c.receive(frame("auth_get_sessions", req_id), now)
        if isinstance(event, Request):
            c.reply(event, None, None)  # keep the in-flight cap out of the way
        return event

    for i in range(3):
        assert isinstance(attempt(i, T0), Request)
    req_id, code, message = error_of(attempt(10, T0))
    assert (req_id, code) == (10, ErrorCode.RATE_LIMITED)
    assert "retry after 10 s" in message
    req_id, code, message = error_of(attempt(11, T0 + 5.0))
    assert code == 429 and "retry after 5 s" in message
    assert isinstance(attempt(12, T0 + 10.0), Request)  # one token back
    assert error_of(attempt(13, T0 + 10.0))[1] == 429
    # A long pause refills the bucket up to the burst, never beyond it.
    assert [isinstance(attempt(20 + i, T0 + 1000.0), Request) for i in range(5)] == [True] * 4 + [False]


def test_refused_frames_take_tokens_too() -> None:
    """Malformed, unserved and not-yet-allowed frames are throttled like requests, so a
    client cannot farm error replies faster than the rate limit."""
    c = core(rate_requests=6, rate_window=60.0, rate_burst=3)
    malformed = bytes.fromhex("0805") + b"\x12\xff"  # id 5, then a truncated field
    unserved = bytes.fromhex("0806") + b"\x22\x00"  # id 6, field 4 (not served)
    assert error_of(c.receive(malformed, T0))[1] == ErrorCode.INVALID_ARGUMENT
    assert error_of(c.receive(unserved, T0))[1] == ErrorCode.NOT_IMPLEMENTED
    assert error_of(c.receive(frame("auth_get_sessions", 7), T0))[1] == 412
    for data, req_id in ((malformed, 5), (unserved, 6), (frame("auth_get_sessions", 7), 7)):
        assert error_of(c.receive(data, T0))[:2] == (req_id, ErrorCode.RATE_LIMITED)


def test_over_long_string_answers_400() -> None:
    c = initialized()
    req_id, code, message = error_of(c.receive(frame("auth_sign_in", 8, email="a" * 5000, password="x"), T0))
    assert (req_id, code) == (8, ErrorCode.INVALID_ARGUMENT)
    assert "email" in message


def test_too_many_repeated_items_answer_400() -> None:
    c = authorized()
    data = frame("auth_revoke_sessions", 9, session_ids=list(range(1, 1001)))
    req_id, code, message = error_of(c.receive(data, T0))
    assert (req_id, code) == (9, 400) and "session_ids" in message
    assert isinstance(c.receive(frame("auth_revoke_sessions", 10, session_ids=[1, 2]), T0), Request)
