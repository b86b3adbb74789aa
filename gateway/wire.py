"""Records to wire messages: the store speaks records, the wire speaks protobuf. Used by the
handlers for replies and by the services for the updates they push."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.proto import auth_pb2, types_pb2
from gateway.store.base import SessionRecord, UserRecord
from gateway.store.social import CommunityRecord, GroupRecord, InviteRecord


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


# -- invites, communities, groups, friends ----------------------------------------------------------


def community(record: CommunityRecord, viewer_id: int) -> types_pb2.Community:
    return types_pb2.Community(id=record.id, name=record.name, owner=record.owner_id == viewer_id)


def group(record: GroupRecord, viewer_id: int) -> types_pb2.Group:
    return types_pb2.Group(id=record.id, name=record.name, owner=record.owner_id == viewer_id,
                           participant_ids=record.member_ids)


def relationship(other_id: int, status: int) -> types_pb2.Relationship:
    return types_pb2.Relationship(user_id=other_id,
                                  status=types_pb2.RelationshipStatus.ValueType(status))


def invite_preview(invite: InviteRecord, creator: UserRecord | None,
                   target: CommunityRecord | GroupRecord | UserRecord | None
                   ) -> auth_pb2.InvitePreview:
    """The preview anyone holding the code may see: no member list, no owner flag."""
    out = auth_pb2.InvitePreview(
        code=invite.code, creator_id=invite.creator_id, target_id=invite.target_id,
        target_type=auth_pb2.InviteType.ValueType(invite.target_type))
    if invite.expires_at is not None:
        out.expires_at = invite.expires_at
    if creator is not None:
        out.creator.CopyFrom(user(creator))
    if isinstance(target, CommunityRecord):
        out.community.CopyFrom(types_pb2.Community(id=target.id, name=target.name))
    elif isinstance(target, GroupRecord):
        out.chat.CopyFrom(types_pb2.Group(id=target.id, name=target.name))
    elif isinstance(target, UserRecord):
        out.user.CopyFrom(user(target))
    return out
