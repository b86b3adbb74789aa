"""The error tree. Each error knows its wire code and is translated once, at the boundary.

Two families, named for who is at fault:

* ``RPCFailure`` — a request was refused. It answers ``RPCError{error_code, error_message}`` for
  that request and the socket stays open. Codes follow HTTP statuses and never change meaning.
* ``PeerViolation`` — the peer broke the transport contract. The socket is closed with the
  error's close code.

Anything else raised while serving a request is our own bug: it answers 500 with no details and the
traceback goes to the log.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    INVALID_ARGUMENT = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    GONE = 410
    FAILED_PRECONDITION = 412
    RATE_LIMITED = 429
    INTERNAL = 500
    NOT_IMPLEMENTED = 501
    UNAVAILABLE = 503


class CloseCode(IntEnum):
    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SESSION_REVOKED = 4001
    INITIALIZE_TIMEOUT = 4002
    AUTHENTICATION_TIMEOUT = 4003


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class RPCFailure(GatewayError):
    """A refused request: answered with an RPCError, the connection carries on."""

    code: ErrorCode = ErrorCode.INTERNAL
    default_message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class InvalidArgument(RPCFailure):
    code = ErrorCode.INVALID_ARGUMENT
    default_message = "invalid argument"


class Malformed(InvalidArgument):
    """A frame with a readable id that is not a valid ClientMessage."""

    default_message = "malformed"


class Unauthenticated(RPCFailure):
    code = ErrorCode.UNAUTHENTICATED
    default_message = "unauthenticated"


class Forbidden(RPCFailure):
    code = ErrorCode.FORBIDDEN
    default_message = "forbidden"


class NotFound(RPCFailure):
    code = ErrorCode.NOT_FOUND
    default_message = "not found"


class Conflict(RPCFailure):
    code = ErrorCode.CONFLICT
    default_message = "conflict"


class Gone(RPCFailure):
    code = ErrorCode.GONE
    default_message = "gone"


class FailedPrecondition(RPCFailure):
    code = ErrorCode.FAILED_PRECONDITION
    default_message = "failed precondition"


class RateLimited(RPCFailure):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = max(0.0, retry_after)
        seconds = max(1, int(self.retry_after + 0.999))
        super().__init__(message or f"rate limited; retry after {seconds} s")


class Internal(RPCFailure):
    code = ErrorCode.INTERNAL
    default_message = "internal error"


class Unimplemented(RPCFailure):
    code = ErrorCode.NOT_IMPLEMENTED
    default_message = "not implemented"


class Unavailable(RPCFailure):
    code = ErrorCode.UNAVAILABLE
    default_message = "temporarily unavailable; retry"


class PeerViolation(GatewayError):
    """The peer broke the transport contract: the socket is closed with ``close_code``."""

    close_code: CloseCode = CloseCode.PROTOCOL_ERROR
    reason = "protocol error"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.reason
        super().__init__(self.reason)


class UndecodableFrame(PeerViolation):
    close_code = CloseCode.INVALID_PAYLOAD
    reason = "undecodable frame"


class TextFrame(PeerViolation):
    close_code = CloseCode.UNSUPPORTED_DATA
    reason = "binary frames only"


#: Every RPC error code with its meaning, for the README table and the tests that keep it true.
ERROR_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "invalid argument, or a malformed frame whose id could be read",
    ErrorCode.UNAUTHENTICATED: "not signed in, bad credentials, or a bad, expired or revoked token",
    ErrorCode.FORBIDDEN: "signed in but not allowed",
    ErrorCode.NOT_FOUND: "no such object (or not yours)",
    ErrorCode.CONFLICT: "already exists (e.g. email taken)",
    ErrorCode.GONE: "expired or used-up code or invite (and any refused code sent to an email address, so the answer does not tell whether it is registered)",
    ErrorCode.FAILED_PRECONDITION: "not initialized, or the connection is in the wrong state",
    ErrorCode.RATE_LIMITED: "throttled; the message says when to retry",
    ErrorCode.INTERNAL: "our bug; no details on the wire",
    ErrorCode.NOT_IMPLEMENTED: "a method this gateway does not serve",
    ErrorCode.UNAVAILABLE: "a dependency is down or overloaded; retry",
}

#: Every close code with its meaning and whether the client should reconnect.
CLOSE_CODES: dict[CloseCode, str] = {
    CloseCode.NORMAL: "normal closure",
    CloseCode.PROTOCOL_ERROR: "WebSocket protocol violation",
    CloseCode.UNSUPPORTED_DATA: "a text frame was sent; binary frames only",
    CloseCode.INVALID_PAYLOAD: "a frame that is not a ClientMessage and has no readable id",
    CloseCode.MESSAGE_TOO_BIG: "a frame over the size cap",
    CloseCode.INTERNAL_ERROR: "server error, or no pong within the ping timeout",
    CloseCode.SERVICE_RESTART: "the node is shutting down; reconnect (to any node)",
    CloseCode.TRY_AGAIN_LATER: "the client did not read its replies (its send queue filled up)",
    CloseCode.SESSION_REVOKED: "the session was revoked; do not resume it, sign in again",
    CloseCode.INITIALIZE_TIMEOUT: "core.initialize did not arrive in time",
    CloseCode.AUTHENTICATION_TIMEOUT: "the socket stayed unauthenticated too long",
}
