"""whatisup: Python client of the whatisup WhatsApp gateway (gRPC), Apache-2.0.

    import whatisup
    with whatisup.Client("zpk_test_...", target="127.0.0.1:8080") as client:
        ch = client.channels.create("support")
        ...

Generated protobuf/gRPC modules live in `whatisup.v1` (`channels_pb2`, `channels_pb2_grpc`, ...).
"""

from ._client import Client, EventStream, __version__, to_dict
from ._errors import (
    AuthError,
    Conflict,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    Unavailable,
    WebhookVerificationError,
    WhatisupError,
)
from ._webhooks import sign_webhook, verify_webhook

__all__ = [
    "Client",
    "EventStream",
    "to_dict",
    "verify_webhook",
    "sign_webhook",
    "WhatisupError",
    "InvalidRequest",
    "PayloadTooLarge",
    "AuthError",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "RateLimited",
    "Unavailable",
    "DeadlineExceeded",
    "ServerError",
    "WebhookVerificationError",
    "__version__",
]
