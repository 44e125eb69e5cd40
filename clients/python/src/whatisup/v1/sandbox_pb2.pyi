from whatisup.v1 import channels_pb2 as _channels_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxScanRequest(_message.Message):
    __slots__ = ("id", "phone_number")
    ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    id: str
    phone_number: str
    def __init__(self, id: _Optional[str] = ..., phone_number: _Optional[str] = ...) -> None: ...

class SandboxDropRequest(_message.Message):
    __slots__ = ("id", "duration_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    duration_ms: int
    def __init__(self, id: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class SandboxRevokeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SandboxBanRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SandboxInboundRequest(_message.Message):
    __slots__ = ("id", "text", "type", "media_base64", "media_url", "caption", "mime_type", "filename", "latitude", "longitude", "name", "address", "message_id", "emoji")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_BASE64_FIELD_NUMBER: _ClassVar[int]
    MEDIA_URL_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    type: str
    media_base64: str
    media_url: str
    caption: str
    mime_type: str
    filename: str
    latitude: float
    longitude: float
    name: str
    address: str
    message_id: str
    emoji: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., type: _Optional[str] = ..., media_base64: _Optional[str] = ..., media_url: _Optional[str] = ..., caption: _Optional[str] = ..., mime_type: _Optional[str] = ..., filename: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., message_id: _Optional[str] = ..., emoji: _Optional[str] = ..., **kwargs) -> None: ...

class SandboxReceiptRequest(_message.Message):
    __slots__ = ("id", "message_id", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    message_id: str
    status: str
    def __init__(self, id: _Optional[str] = ..., message_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class SandboxActionResponse(_message.Message):
    __slots__ = ("channel", "message_id")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    channel: _channels_pb2.Channel
    message_id: str
    def __init__(self, channel: _Optional[_Union[_channels_pb2.Channel, _Mapping]] = ..., message_id: _Optional[str] = ...) -> None: ...
