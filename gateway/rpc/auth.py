"""Handlers of auth.signUp, auth.signIn, auth.authorize, auth.getSessions, auth.revokeSessions."""

from __future__ import annotations

import logging

from gateway import wire
from gateway.errors import Unauthenticated
from gateway.proto import auth_pb2
from gateway.rpc.context import Context
from gateway.services.accounts import SignedIn
from gateway.services.sessions import Device
from gateway.services.tokens import token_fingerprint
from gateway.store.base import SessionRecord

log = logging.getLogger("gateway.auth")


def device_of(ctx: Context) -> Device:
    c = ctx.core.client
    return Device(client_id=c.client_id, device_type=c.device_type,
                  device_version=c.device_version, app_version=c.app_version,
                  country=ctx.country, region=ctx.region, ip=ctx.ip)


async def _bound(ctx: Context, signed: SignedIn) -> auth_pb2.Authorization:
    await ctx.bind_session(signed.user.id, signed.session.id, new_session=True)
    return auth_pb2.Authorization(token=signed.token, user=wire.user(signed.user),
                                  session_id=signed.session.id)


async def sign_up(ctx: Context, req: auth_pb2.SignUp) -> auth_pb2.Authorization:
    signed = await ctx.services.accounts.sign_up(
        req.email if req.HasField("email") else None,
        req.password if req.HasField("password") else None,
        req.name, device_of(ctx))
    await ctx.services.recovery.after_sign_up(signed.user)
    return await _bound(ctx, signed)


async def sign_in(ctx: Context, req: auth_pb2.SignIn) -> auth_pb2.Authorization:
    signed = await ctx.services.accounts.sign_in(
        req.email, req.password, req.totp if req.HasField("totp") else None, device_of(ctx))
    return await _bound(ctx, signed)


async def authorize(ctx: Context, req: auth_pb2.Authorize) -> auth_pb2.Authorization:
    services = ctx.services
    try:
        record = await services.sessions.authenticate(req.token)
        user = await services.accounts.user(record.user_id)
    except Unauthenticated:
        log.info("authorize refused token=%s ip=%s", token_fingerprint(req.token), ctx.ip)
        # §4.4: after a refused authorize the connection is unauthenticated, whatever it was.
        await ctx.unbind_session()
        raise
    services.sessions.touch(record, device_of(ctx))
    await ctx.bind_session(user.id, record.id)
    # A revocation that committed after the check above but before the bind found no socket
    # to kick here; look once more now that the socket is registered (S2).
    if await services.store.session_by_id(record.id) is None:
        await ctx.unbind_session()
        raise Unauthenticated("invalid token")
    log.info("authorize ok user=%d session=%d ip=%s", user.id, record.id, ctx.ip)
    return auth_pb2.Authorization(token=req.token, user=wire.user(user), session_id=record.id)


#: user id -> (the session list the service returned, its wire form). The service hands back
#: the same list object while its cache entry lives, so an identity check says when to rebuild.
_wire_sessions: dict[int, tuple[list[SessionRecord], list[auth_pb2.Session]]] = {}
_WIRE_CACHE_MAX = 10_000


async def get_sessions(ctx: Context, req: auth_pb2.GetSessions) -> auth_pb2.Sessions:
    services = ctx.services
    user_id = ctx.core.user_id
    records = await services.sessions.of_user(user_id)
    cached = _wire_sessions.get(user_id)
    if cached is None or cached[0] is not records:
        if len(_wire_sessions) >= _WIRE_CACHE_MAX:
            _wire_sessions.clear()
        cached = (records, [wire.session(r, services.app_names) for r in records])
        _wire_sessions[user_id] = cached
    out = auth_pb2.Sessions(current=ctx.core.session_id)
    out.sessions.extend(cached[1])
    return out


async def revoke_sessions(ctx: Context, req: auth_pb2.RevokeSessions) -> None:
    await ctx.services.sessions.revoke(ctx.core.user_id, req.session_ids)
