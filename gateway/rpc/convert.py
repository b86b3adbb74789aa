"""Records to wire messages (the services speak records, the wire speaks protobuf)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.proto import auth_pb2, types_pb2
from gateway.store.base import SessionRecord, UserRecord


def user(record: UserRecord) -> types_pb2.User:
    return types_pb2.User(id=record.id, name=record.name)


def session(record: SessionRecord, app_names: Mapping[int, str]) -> auth_pb2.Session:
    out = auth_pb2.Session(
        id=record.id, client_id=record.client_id, device_type=record.device_type,
        device_version=record.device_version, app_name=app_names.get(record.client_id, ""),
        app_version=record.app_version, last_active=record.last_active,
    )
    if record.country is not None:
        out.country = record.country
    if record.region is not None:
        out.region = record.region
    return out
