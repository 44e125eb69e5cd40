"""Errors: every failed call raises a `WhatisupError` subclass carrying the contract's error code.

The gateway puts `google.rpc.Status` (with one `google.rpc.ErrorInfo{reason: code, metadata: details}`) in the
`grpc-status-details-bin` trailer. The package depends on protobuf only (not googleapis-common-protos), so the two
messages are declared here in a private descriptor pool: they parse with protobuf itself and cannot clash with a
`google.rpc` that the application loads from elsewhere.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory


class WhatisupError(Exception):
    """A call the gateway refused or could not answer.

    code: the contract's error code (`channel_not_found`, `auth_invalid`, ...); for failures that never reached
        the gateway (connection refused, deadline) the lower-case gRPC status name (`unavailable`, ...).
    message: the human-readable message.
    details: dict of the error's details (e.g. {"field": "to"} or {"channel_id": "ch_..."}), values as strings.
    grpc_code: the `grpc.StatusCode`.
    request_id: the gateway's request id ("req_..."), when it sent one: quote it when reporting a problem.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        details: Optional[Mapping[str, str]] = None,
        grpc_code: Optional[grpc.StatusCode] = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = dict(details or {})
        self.grpc_code = grpc_code
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, details={self.details!r})"


class InvalidRequest(WhatisupError):
    """400 `invalid_request`: `details["field"]` names the offending field."""


class PayloadTooLarge(InvalidRequest):
    """413 `payload_too_large`."""


class AuthError(WhatisupError):
    """401: `auth_missing`, `auth_malformed`, `auth_invalid`, `auth_expired`."""


class PermissionDenied(WhatisupError):
    """403: `channel_access_denied`, `channel_scoped_key`."""


class NotFound(WhatisupError):
    """404: `channel_not_found`, `message_not_found`, `webhook_endpoint_not_found`, `delivery_not_found`, ..."""


class Conflict(WhatisupError):
    """409: `invalid_lifecycle_transition`, `not_connected`, `no_qr`, `not_sandbox`, `idempotency_conflict`,
    `concurrent_modification`."""


class RateLimited(WhatisupError):
    """429 `rate_limited`. `retry_after`: seconds to wait (float), or None when the gateway did not say."""

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unavailable(WhatisupError):
    """The gateway is unreachable or overloaded (`unavailable`); safe to retry later."""


class DeadlineExceeded(WhatisupError):
    """The call's timeout ran out before an answer."""


class ServerError(WhatisupError):
    """500 `internal` (or an unknown failure): the request id identifies it in the gateway's logs."""


class WebhookVerificationError(ValueError):
    """A webhook request whose signature, id or timestamp does not verify: answer it 4xx and ignore it."""


_BY_REASON = {
    "invalid_request": InvalidRequest,
    "payload_too_large": PayloadTooLarge,
    "auth_missing": AuthError,
    "auth_malformed": AuthError,
    "auth_invalid": AuthError,
    "auth_expired": AuthError,
    "channel_access_denied": PermissionDenied,
    "channel_scoped_key": PermissionDenied,
    "channel_not_found": NotFound,
    "message_not_found": NotFound,
    "webhook_endpoint_not_found": NotFound,
    "delivery_not_found": NotFound,
    "api_key_not_found": NotFound,
    "not_found": NotFound,
    "invalid_lifecycle_transition": Conflict,
    "not_connected": Conflict,
    "no_qr": Conflict,
    "not_sandbox": Conflict,
    "idempotency_conflict": Conflict,
    "concurrent_modification": Conflict,
    "rate_limited": RateLimited,
    "internal": ServerError,
    "unavailable": Unavailable,
}

_BY_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
}

ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def _rpc_messages():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(
        name="whatisup/_google_rpc.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    status = fd.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    status.field.add(
        name="details", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".google.protobuf.Any"
    )
    info = fd.message_type.add(name="ErrorInfo")
    info.field.add(name="reason", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    info.field.add(name="domain", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    info.field.add(
        name="metadata",
        number=3,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".google.rpc.ErrorInfo.MetadataEntry",
    )
    entry = info.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pool.Add(fd)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.ErrorInfo")),
    )


RpcStatus, ErrorInfo = _rpc_messages()


def _metadata_value(md: Any, key: str) -> Any:
    for k, v in md or ():
        if k.lower() == key:
            return v
    return None


def from_rpc_error(err: grpc.RpcError) -> WhatisupError:
    """The `WhatisupError` for a failed gRPC call (a `grpc.RpcError` that is also a `grpc.Call`)."""
    status = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(status)
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    initial = err.initial_metadata() if hasattr(err, "initial_metadata") else None
    code, details = "", {}
    raw = _metadata_value(trailing, "grpc-status-details-bin")
    if isinstance(raw, bytes):
        try:
            st = RpcStatus.FromString(raw)
        except Exception:  # a garbled trailer must not hide the real error
            st = None
        if st is not None:
            message = st.message or message
            for d in st.details:
                if d.type_url == ERROR_INFO_TYPE:
                    info = ErrorInfo.FromString(d.value)
                    code, details = info.reason, dict(info.metadata)
                    break
    if not code and status is not None:
        code = status.name.lower()
    request_id = _metadata_value(trailing, "x-request-id") or _metadata_value(initial, "x-request-id")
    cls = _BY_REASON.get(code) or _BY_STATUS.get(status, WhatisupError)
    kw: dict = dict(code=code, details=details, grpc_code=status, request_id=request_id)
    if cls is RateLimited:
        retry_after = details.get("retry_after") or _metadata_value(trailing, "retry-after")
        try:
            kw["retry_after"] = float(retry_after) if retry_after is not None else None
        except ValueError:
            kw["retry_after"] = None
    return cls(message, **kw)
