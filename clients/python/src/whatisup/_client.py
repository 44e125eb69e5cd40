"""`whatisup.Client`: a small idiomatic layer over the generated gRPC stubs.

Every method returns the generated protobuf message of the RPC (`whatisup.v1.*_pb2`); `whatisup.to_dict(msg)`
turns one into a plain dict with the contract's snake_case names. Every failure raises a `WhatisupError`
subclass (see `whatisup._errors`).
"""

from __future__ import annotations

import base64
import datetime as _dt
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from ._errors import from_rpc_error
from ._events import EventStream
from .v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    channels_pb2,
    channels_pb2_grpc,
    events_pb2_grpc,
    media_pb2,
    media_pb2_grpc,
    messages_pb2,
    messages_pb2_grpc,
    sandbox_pb2,
    sandbox_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

__version__ = "0.1.0"

# Unary calls give up after this many seconds unless told otherwise (a QR wait adds its own).
DEFAULT_TIMEOUT = 30.0

# The channel's own reconnect backoff (gRPC's defaults go up to 2 minutes): a gateway that comes back is reached
# within seconds.
_DEFAULT_OPTIONS: Tuple[Tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.primary_user_agent", f"whatisup-python/{__version__}"),
)

Timestamp = Union[_dt.datetime, timestamp_pb2.Timestamp, None]


def to_dict(message: Any) -> dict:
    """A generated message as a dict with the proto field names (snake_case), as the REST API writes them."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _ts(value: Timestamp) -> Optional[timestamp_pb2.Timestamp]:
    if value is None or isinstance(value, timestamp_pb2.Timestamp):
        return value
    t = timestamp_pb2.Timestamp()
    if value.tzinfo is None:
        raise ValueError("give an aware datetime (e.g. datetime.now(timezone.utc))")
    t.FromDatetime(value.astimezone(_dt.timezone.utc).replace(tzinfo=None))
    return t


def _struct(value: Optional[Mapping[str, Any]]) -> Optional[struct_pb2.Struct]:
    if value is None:
        return None
    s = struct_pb2.Struct()
    s.update(dict(value))
    return s


class _Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channels = channels_pb2_grpc.ChannelServiceStub(channel)
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(channel)
        self.events = events_pb2_grpc.EventServiceStub(channel)
        self.messages = messages_pb2_grpc.MessageServiceStub(channel)
        self.media = media_pb2_grpc.MediaServiceStub(channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(channel)
        self.api_keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)


class Client:
    """A connection to a whatisup gateway over gRPC.

    api_key: a `zpk_live_...` or `zpk_test_...` key (sent as `authorization: Bearer <key>`).
    target: host:port of the gateway (its one port serves gRPC).
    secure: TLS (with the system's roots, or `credentials=`); False for plain h2c, e.g. on localhost.
    timeout: seconds for each unary call.
    options: extra gRPC channel options, e.g. [("grpc.max_receive_message_length", 64 << 20)].

    Use it as a context manager, or call `close()`: that closes the gRPC channel and ends open event streams.
    """

    def __init__(
        self,
        api_key: str,
        target: str = "127.0.0.1:8080",
        secure: bool = False,
        *,
        credentials: Optional[grpc.ChannelCredentials] = None,
        timeout: float = DEFAULT_TIMEOUT,
        options: Optional[Sequence[Tuple[str, Any]]] = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        opts = list(_DEFAULT_OPTIONS) + list(options or [])
        if secure or credentials is not None:
            self._channel = grpc.secure_channel(target, credentials or grpc.ssl_channel_credentials(), opts)
        else:
            self._channel = grpc.insecure_channel(target, opts)
        self._metadata: Tuple[Tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),)
        self._timeout = timeout
        self._closed = False
        self._stubs = _Stubs(self._channel)
        self.channels = Channels(self)
        self.messages = Messages(self)
        self.media = Media(self)
        self.events = Events(self)
        self.webhooks = Webhooks(self)
        self.api_keys = ApiKeys(self)
        self.sandbox = Sandbox(self)

    @property
    def grpc_channel(self) -> grpc.Channel:
        """The underlying channel, for calling the generated stubs directly (pass `metadata=client.metadata`)."""
        return self._channel

    @property
    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        return self._metadata

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, *, timeout: Optional[float] = None, idempotency_key: Optional[str] = None):
        md = self._metadata
        if idempotency_key is not None:
            md = md + (("idempotency-key", idempotency_key),)
        try:
            return method(request, metadata=md, timeout=timeout or self._timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e


class _Namespace:
    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def _stubs(self) -> _Stubs:
        return self._client._stubs

    def _call(self, method, request, **kw):
        return self._client._call(method, request, **kw)


class Channels(_Namespace):
    """Channels: one WhatsApp account each (contract §4)."""

    def create(
        self,
        name: str,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        send_rate_per_sec: Optional[float] = None,
        send_burst: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> channels_pb2.Channel:
        req = channels_pb2.CreateChannelRequest(
            name=name, metadata=_struct(metadata), send_rate_per_sec=send_rate_per_sec, send_burst=send_burst
        )
        return self._call(self._stubs.channels.CreateChannel, req, idempotency_key=idempotency_key)

    def list_page(
        self, *, limit: int = 0, cursor: str = "", status: Optional[str] = None
    ) -> channels_pb2.ListChannelsResponse:
        """One page (`data`, `next_cursor`), newest first."""
        req = channels_pb2.ListChannelsRequest(limit=limit, cursor=cursor, status=status or "")
        return self._call(self._stubs.channels.ListChannels, req)

    def list(self, status: Optional[str] = None, *, page_size: int = 100) -> Iterator[channels_pb2.Channel]:
        """Every channel (newest first, deleted ones excluded), fetching page after page as it is iterated."""
        cursor = ""
        while True:
            page = self.list_page(limit=page_size, cursor=cursor, status=status)
            yield from page.data
            if not page.HasField("next_cursor") or not page.next_cursor:
                return
            cursor = page.next_cursor

    def get(self, id: str) -> channels_pb2.Channel:
        return self._call(self._stubs.channels.GetChannel, channels_pb2.GetChannelRequest(id=id))

    def delete(self, id: str) -> channels_pb2.Channel:
        return self._call(self._stubs.channels.DeleteChannel, channels_pb2.DeleteChannelRequest(id=id))

    def connect(self, id: str) -> channels_pb2.Channel:
        return self._call(self._stubs.channels.ConnectChannel, channels_pb2.ConnectChannelRequest(id=id))

    def logout(self, id: str) -> channels_pb2.Channel:
        return self._call(self._stubs.channels.LogoutChannel, channels_pb2.LogoutChannelRequest(id=id))

    def qr(self, id: str, wait: int = 10) -> channels_pb2.GetQrResponse:
        """Waits up to `wait` seconds (at most 30) for a QR code; starts the session from `pending`."""
        req = channels_pb2.GetQrRequest(id=id, wait=wait)
        return self._call(self._stubs.channels.GetQr, req, timeout=max(self._client._timeout, wait + 10))

    def pair_code(self, id: str, phone: str) -> channels_pb2.PairCodeResponse:
        """A code to type on the phone (Linked devices → Link with phone number) instead of scanning a QR."""
        req = channels_pb2.RequestPairCodeRequest(id=id, phone_number=phone)
        return self._call(self._stubs.channels.RequestPairCode, req)


_MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")

Media_ = Union[str, bytes, media_pb2.UploadMediaResponse]


class Messages(_Namespace):
    """Outbound messages (contract §6)."""

    def send(
        self,
        channel_id: str,
        to: str,
        text: Optional[str] = None,
        *,
        image: Optional[Media_] = None,
        video: Optional[Media_] = None,
        audio: Optional[Media_] = None,
        document: Optional[Media_] = None,
        sticker: Optional[Media_] = None,
        caption: Optional[str] = None,
        filename: Optional[str] = None,
        mime_type: Optional[str] = None,
        location: Union[Tuple[float, float], Mapping[str, Any], None] = None,
        reaction: Union[Tuple[str, str], Mapping[str, str], None] = None,
        reply_to: Optional[str] = None,
        client_ref: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> messages_pb2.SendMessageResponse:
        """Sends exactly one of: `text`, a media kind, `location`, `reaction`.

        A media kind (`image=`, `video=`, `audio=`, `document=`, `sticker=`) takes an http(s) URL (the gateway
        fetches it), a media id from `client.media.upload` (or its answer), or the bytes themselves (uploaded
        first; give `mime_type`). `location`: (latitude, longitude) or {"latitude", "longitude", "name"?,
        "address"?}. `reaction`: (message_id, emoji) or {"message_id", "emoji"}; emoji "" removes one.
        `client_ref` (same ref within 24 h → the original message) and `idempotency_key` (same key → the same
        answer) make retries safe. Answers `message_id` and `status` (`queued` or `sent`).
        """
        media = {k: v for k, v in zip(_MEDIA_KINDS, (image, video, audio, document, sticker)) if v is not None}
        kinds = (["text"] if text is not None else []) + list(media)
        kinds += (["location"] if location is not None else []) + (["reaction"] if reaction is not None else [])
        if len(kinds) != 1:
            raise ValueError("give exactly one of text, image, video, audio, document, sticker, location, reaction")
        kind = kinds[0]
        req = messages_pb2.SendMessageRequest(
            channel_id=channel_id, to=to, type=kind, reply_to=reply_to, client_ref=client_ref
        )
        if kind == "text":
            req.text = text
        elif kind == "location":
            loc = dict(location) if isinstance(location, Mapping) else dict(zip(("latitude", "longitude"), location))
            req.latitude, req.longitude = float(loc["latitude"]), float(loc["longitude"])
            if loc.get("name") is not None:
                req.name = loc["name"]
            if loc.get("address") is not None:
                req.address = loc["address"]
        elif kind == "reaction":
            r = dict(reaction) if isinstance(reaction, Mapping) else dict(zip(("message_id", "emoji"), reaction))
            req.message_id, req.emoji = r["message_id"], r["emoji"]
        else:
            ref = media[kind]
            if isinstance(ref, (bytes, bytearray, memoryview)):
                if not mime_type:
                    raise ValueError("give mime_type with media bytes")
                ref = self._client.media.upload(channel_id, bytes(ref), mime_type, filename)
            if isinstance(ref, media_pb2.UploadMediaResponse):
                req.media_id = ref.media_id
            elif ref.startswith(("http://", "https://")):
                req.media_url = ref
            else:
                req.media_id = ref
            if caption is not None:
                req.caption = caption
            if filename is not None:
                req.filename = filename
            if mime_type is not None:
                req.mime_type = mime_type
        return self._call(self._stubs.messages.SendMessage, req, idempotency_key=idempotency_key)

    def get(self, channel_id: str, message_id: str) -> messages_pb2.Message:
        """The message with its status history."""
        req = messages_pb2.GetMessageRequest(channel_id=channel_id, message_id=message_id)
        return self._call(self._stubs.messages.GetMessage, req)


class Media(_Namespace):
    def upload(
        self, channel_id: str, data: Union[bytes, Any], content_type: str, filename: Optional[str] = None
    ) -> media_pb2.UploadMediaResponse:
        """Uploads bytes (or a binary file object) once, to send by `media_id` as often as needed."""
        if hasattr(data, "read"):
            data = data.read()
        req = media_pb2.UploadMediaRequest(
            channel_id=channel_id, mime_type=content_type, data=bytes(data), filename=filename
        )
        return self._call(self._stubs.media.UploadMedia, req)


class Events(_Namespace):
    def stream(
        self,
        channel_id: Optional[str] = None,
        events: Optional[Iterable[str]] = None,
        since: Optional[str] = None,
        **kw: Any,
    ) -> EventStream:
        """An iterator of `Event` messages that resumes after drops (see `EventStream`).

        channel_id: only this channel's events. events: names or `message.*` patterns. since: a cursor to replay
        after (`"0"`: the whole retained log); None starts live.
        """
        return EventStream(self._client, channel_id, events, since, **kw)


def _strings(values: Optional[Iterable[str]]) -> Optional[webhooks_pb2.StringList]:
    return None if values is None else webhooks_pb2.StringList(values=list(values))


class Webhooks(_Namespace):
    """Webhook endpoints and their deliveries (contract §7)."""

    def create(
        self,
        url: str,
        events: Optional[Iterable[str]] = None,
        *,
        channel_id: Optional[str] = None,
        enabled: Optional[bool] = None,
        description: Optional[str] = None,
        retry_schedule: Optional[Iterable[str]] = None,
        idempotency_key: Optional[str] = None,
    ) -> webhooks_pb2.WebhookEndpoint:
        """The endpoint, with its `signing_secret` (`whsec_...`): shown only here (and by rotate_secret)."""
        req = webhooks_pb2.CreateWebhookEndpointRequest(
            url=url,
            events=list(events or []),
            channel_id=channel_id,
            enabled=enabled,
            description=description,
            retry_schedule=list(retry_schedule or []),
        )
        return self._call(self._stubs.webhooks.CreateWebhookEndpoint, req, idempotency_key=idempotency_key)

    def list(self) -> List[webhooks_pb2.WebhookEndpoint]:
        resp = self._call(self._stubs.webhooks.ListWebhookEndpoints, webhooks_pb2.ListWebhookEndpointsRequest())
        return list(resp.data)

    def get(self, id: str) -> webhooks_pb2.WebhookEndpoint:
        return self._call(self._stubs.webhooks.GetWebhookEndpoint, webhooks_pb2.GetWebhookEndpointRequest(id=id))

    def update(
        self,
        id: str,
        *,
        url: Optional[str] = None,
        events: Optional[Iterable[str]] = None,
        channel_id: Optional[str] = None,
        enabled: Optional[bool] = None,
        description: Optional[str] = None,
        retry_schedule: Optional[Iterable[str]] = None,
    ) -> webhooks_pb2.WebhookEndpoint:
        """Changes the given fields only. channel_id="" clears the channel filter; retry_schedule=[] returns to
        the server's schedule."""
        req = webhooks_pb2.UpdateWebhookEndpointRequest(
            id=id,
            url=url,
            events=_strings(events),
            channel_id=channel_id,
            enabled=enabled,
            description=description,
            retry_schedule=_strings(retry_schedule),
        )
        return self._call(self._stubs.webhooks.UpdateWebhookEndpoint, req)

    def delete(self, id: str) -> webhooks_pb2.WebhookEndpoint:
        req = webhooks_pb2.DeleteWebhookEndpointRequest(id=id)
        return self._call(self._stubs.webhooks.DeleteWebhookEndpoint, req)

    def rotate_secret(self, id: str) -> webhooks_pb2.WebhookEndpoint:
        """A new secret (in `signing_secret`); the previous one keeps signing beside it for 24 h."""
        req = webhooks_pb2.RotateWebhookSecretRequest(id=id)
        return self._call(self._stubs.webhooks.RotateWebhookSecret, req)

    def recover(self, id: str, since: Timestamp) -> int:
        """Queues the endpoint's failed deliveries created at or after `since` again; answers how many."""
        req = webhooks_pb2.RecoverWebhookEndpointRequest(id=id, since=_ts(since))
        return self._call(self._stubs.webhooks.RecoverWebhookEndpoint, req).requeued

    def deliveries_page(
        self,
        *,
        endpoint_id: Optional[str] = None,
        channel_id: Optional[str] = None,
        event: Optional[str] = None,
        status: Optional[str] = None,
        limit: int = 0,
        cursor: str = "",
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        req = webhooks_pb2.ListWebhookDeliveriesRequest(
            endpoint_id=endpoint_id or "",
            channel_id=channel_id or "",
            event=event or "",
            status=status or "",
            limit=limit,
            cursor=cursor,
        )
        return self._call(self._stubs.webhooks.ListWebhookDeliveries, req)

    def deliveries(
        self,
        endpoint_id: Optional[str] = None,
        *,
        channel_id: Optional[str] = None,
        event: Optional[str] = None,
        status: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[webhooks_pb2.WebhookDelivery]:
        """Every matching delivery, page after page as it is iterated."""
        cursor = ""
        while True:
            page = self.deliveries_page(
                endpoint_id=endpoint_id,
                channel_id=channel_id,
                event=event,
                status=status,
                limit=page_size,
                cursor=cursor,
            )
            yield from page.data
            if not page.HasField("next_cursor") or not page.next_cursor:
                return
            cursor = page.next_cursor

    def delivery(self, id: str) -> webhooks_pb2.WebhookDelivery:
        """One delivery with every attempt."""
        return self._call(self._stubs.webhooks.GetWebhookDelivery, webhooks_pb2.GetWebhookDeliveryRequest(id=id))

    def redeliver(self, id: str) -> webhooks_pb2.WebhookDelivery:
        return self._call(self._stubs.webhooks.RedeliverWebhook, webhooks_pb2.RedeliverWebhookRequest(id=id))


class ApiKeys(_Namespace):
    """API keys of the caller's customer, in the caller's mode (a channel-bound key cannot manage keys)."""

    def create(
        self,
        name: str,
        *,
        channel_id: Optional[str] = None,
        expires_at: Timestamp = None,
        idempotency_key: Optional[str] = None,
    ) -> api_keys_pb2.CreateApiKeyResponse:
        """`api_key` and `secret` (shown once)."""
        req = api_keys_pb2.CreateApiKeyRequest(name=name, channel_id=channel_id, expires_at=_ts(expires_at))
        return self._call(self._stubs.api_keys.CreateApiKey, req, idempotency_key=idempotency_key)

    def list(self) -> List[api_keys_pb2.ApiKey]:
        return list(self._call(self._stubs.api_keys.ListApiKeys, api_keys_pb2.ListApiKeysRequest()).data)

    def delete(self, id: str) -> api_keys_pb2.ApiKey:
        return self._call(self._stubs.api_keys.DeleteApiKey, api_keys_pb2.DeleteApiKeyRequest(id=id))


class Sandbox(_Namespace):
    """The simulated phone behind a test-mode channel (contract §4.3): a live channel answers Conflict
    `not_sandbox`. Each action answers the channel (and `message_id` for inbound)."""

    def scan(self, id: str, phone_number: Optional[str] = None) -> sandbox_pb2.SandboxActionResponse:
        """Completes pairing, as if the phone scanned the QR code."""
        req = sandbox_pb2.SandboxScanRequest(id=id, phone_number=phone_number or "")
        return self._call(self._stubs.sandbox.Scan, req)

    def drop(self, id: str, duration_ms: Optional[int] = None) -> sandbox_pb2.SandboxActionResponse:
        """A network blip; the session resumes by itself."""
        return self._call(self._stubs.sandbox.Drop, sandbox_pb2.SandboxDropRequest(id=id, duration_ms=duration_ms))

    def revoke(self, id: str) -> sandbox_pb2.SandboxActionResponse:
        """Logged out from the phone."""
        return self._call(self._stubs.sandbox.Revoke, sandbox_pb2.SandboxRevokeRequest(id=id))

    def ban(self, id: str) -> sandbox_pb2.SandboxActionResponse:
        return self._call(self._stubs.sandbox.Ban, sandbox_pb2.SandboxBanRequest(id=id))

    def inbound(
        self,
        id: str,
        from_: str,
        text: Optional[str] = None,
        *,
        type: Optional[str] = None,
        media: Optional[bytes] = None,
        media_url: Optional[str] = None,
        mime_type: Optional[str] = None,
        caption: Optional[str] = None,
        filename: Optional[str] = None,
        location: Union[Tuple[float, float], Mapping[str, Any], None] = None,
        reaction: Union[Tuple[str, str], Mapping[str, str], None] = None,
    ) -> sandbox_pb2.SandboxActionResponse:
        """A message arrives from `from_` (E.164 or a group): text by default, or media (`type` + `media` bytes
        or `media_url`), a `location`, or a `reaction` ((message_id, emoji))."""
        req = sandbox_pb2.SandboxInboundRequest(id=id, text=text or "", type=type or "", **{"from": from_})
        if media is not None:
            req.media_base64 = base64.b64encode(media).decode("ascii")
        for field, value in (
            ("media_url", media_url),
            ("mime_type", mime_type),
            ("caption", caption),
            ("filename", filename),
        ):
            if value is not None:
                setattr(req, field, value)
        if location is not None:
            loc = dict(location) if isinstance(location, Mapping) else dict(zip(("latitude", "longitude"), location))
            req.type = req.type or "location"
            req.latitude, req.longitude = float(loc["latitude"]), float(loc["longitude"])
            for field in ("name", "address"):
                if loc.get(field) is not None:
                    setattr(req, field, loc[field])
        if reaction is not None:
            r = dict(reaction) if isinstance(reaction, Mapping) else dict(zip(("message_id", "emoji"), reaction))
            req.type = req.type or "reaction"
            req.message_id, req.emoji = r["message_id"], r["emoji"]
        return self._call(self._stubs.sandbox.Inbound, req)

    def receipt(self, id: str, message_id: str, status: str) -> sandbox_pb2.SandboxActionResponse:
        """The recipient's phone reports `delivered`, `read` or `played` for one of our messages."""
        req = sandbox_pb2.SandboxReceiptRequest(id=id, message_id=message_id, status=status)
        return self._call(self._stubs.sandbox.Receipt, req)
