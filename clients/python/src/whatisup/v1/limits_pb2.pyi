from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Limits(_message.Message):
    __slots__ = ("rate_limit", "requests", "messages", "media", "lists", "webhooks")
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    rate_limit: RateLimit
    requests: RequestLimits
    messages: MessageLimits
    media: MediaLimits
    lists: ListLimits
    webhooks: WebhookLimits
    def __init__(self, rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., requests: _Optional[_Union[RequestLimits, _Mapping]] = ..., messages: _Optional[_Union[MessageLimits, _Mapping]] = ..., media: _Optional[_Union[MediaLimits, _Mapping]] = ..., lists: _Optional[_Union[ListLimits, _Mapping]] = ..., webhooks: _Optional[_Union[WebhookLimits, _Mapping]] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("limit", "refill_per_sec", "remaining", "reset")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REFILL_PER_SEC_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    limit: int
    refill_per_sec: float
    remaining: int
    reset: int
    def __init__(self, limit: _Optional[int] = ..., refill_per_sec: _Optional[float] = ..., remaining: _Optional[int] = ..., reset: _Optional[int] = ...) -> None: ...

class RequestLimits(_message.Message):
    __slots__ = ("max_body_bytes", "max_upload_bytes", "idempotency_key_max_chars")
    MAX_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    max_body_bytes: int
    max_upload_bytes: int
    idempotency_key_max_chars: int
    def __init__(self, max_body_bytes: _Optional[int] = ..., max_upload_bytes: _Optional[int] = ..., idempotency_key_max_chars: _Optional[int] = ...) -> None: ...

class MessageLimits(_message.Message):
    __slots__ = ("text_max_chars", "caption_max_chars", "client_ref_max_chars", "send_rate_per_sec", "send_burst", "ttl_secs", "outbox_max_per_channel")
    TEXT_MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    CAPTION_MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REF_MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    SEND_RATE_PER_SEC_FIELD_NUMBER: _ClassVar[int]
    SEND_BURST_FIELD_NUMBER: _ClassVar[int]
    TTL_SECS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_MAX_PER_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    text_max_chars: int
    caption_max_chars: int
    client_ref_max_chars: int
    send_rate_per_sec: float
    send_burst: int
    ttl_secs: int
    outbox_max_per_channel: int
    def __init__(self, text_max_chars: _Optional[int] = ..., caption_max_chars: _Optional[int] = ..., client_ref_max_chars: _Optional[int] = ..., send_rate_per_sec: _Optional[float] = ..., send_burst: _Optional[int] = ..., ttl_secs: _Optional[int] = ..., outbox_max_per_channel: _Optional[int] = ...) -> None: ...

class MediaLimits(_message.Message):
    __slots__ = ("max_bytes", "retention_secs")
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_SECS_FIELD_NUMBER: _ClassVar[int]
    max_bytes: int
    retention_secs: int
    def __init__(self, max_bytes: _Optional[int] = ..., retention_secs: _Optional[int] = ...) -> None: ...

class ListLimits(_message.Message):
    __slots__ = ("channels", "webhook_deliveries", "audit_events", "webhook_endpoints")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    channels: int
    webhook_deliveries: int
    audit_events: int
    webhook_endpoints: int
    def __init__(self, channels: _Optional[int] = ..., webhook_deliveries: _Optional[int] = ..., audit_events: _Optional[int] = ..., webhook_endpoints: _Optional[int] = ...) -> None: ...

class WebhookLimits(_message.Message):
    __slots__ = ("max_endpoints", "url_max_chars", "max_event_filters", "description_max_chars", "retry_schedule", "max_retry_schedule", "timeout_ms", "disable_after_secs")
    MAX_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    URL_MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENT_FILTERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    RETRY_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRY_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_AFTER_SECS_FIELD_NUMBER: _ClassVar[int]
    max_endpoints: int
    url_max_chars: int
    max_event_filters: int
    description_max_chars: int
    retry_schedule: _containers.RepeatedScalarFieldContainer[str]
    max_retry_schedule: int
    timeout_ms: int
    disable_after_secs: int
    def __init__(self, max_endpoints: _Optional[int] = ..., url_max_chars: _Optional[int] = ..., max_event_filters: _Optional[int] = ..., description_max_chars: _Optional[int] = ..., retry_schedule: _Optional[_Iterable[str]] = ..., max_retry_schedule: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., disable_after_secs: _Optional[int] = ...) -> None: ...

class GetLimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
