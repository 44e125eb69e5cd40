"""Standard Webhooks verification of the gateway's webhook requests (contract §7)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from ._errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"

Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]


def _lower_headers(headers: Headers) -> dict:
    # Mappings (dict, http.server's message, framework header objects) and lists of pairs alike; names are
    # case-insensitive in HTTP, so compare them lower-cased.
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict = {}
    for k, v in items:
        out.setdefault(str(k).lower(), v)
    return out


def _key(secret: Union[str, bytes]) -> bytes:
    if isinstance(secret, bytes):
        return secret
    s = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the signing secret is not whsec_ followed by base64") from None


def sign_webhook(secret: Union[str, bytes], msg_id: str, timestamp: int, body: Union[bytes, str]) -> str:
    """The `webhook-signature` entry (`v1,<base64>`) for one secret: what the gateway sends. For tests."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode("utf-8") + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify_webhook(
    headers: Headers,
    body: Union[bytes, str],
    secret: Union[str, bytes],
    tolerance: float = 300,
    *,
    now: Optional[float] = None,
) -> Any:
    """Checks a webhook request and returns its parsed JSON envelope.

    headers: the request's headers (any mapping or list of pairs; names are matched case-insensitively).
    body: the raw request body, exactly as received (bytes; a str is UTF-8 encoded). Re-serialised JSON does not
        verify.
    secret: the endpoint's `whsec_...` signing secret (or the raw key bytes).
    tolerance: seconds the `webhook-timestamp` may differ from now (replay protection), default 5 minutes.

    Raises `WebhookVerificationError` when a header is missing, the timestamp is outside the tolerance, or no
    `v1` signature in `webhook-signature` (space-separated; one per active secret during a rotation) matches.
    Receivers should also ignore a `webhook-id` they have already processed (delivery is at-least-once).
    """
    h = _lower_headers(headers)
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        ts_int = int(str(ts).strip())
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a unix time in seconds") from None
    current = time.time() if now is None else now
    if abs(current - ts_int) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (a replay or a wrong clock)")
    if isinstance(body, str):
        body = body.encode("utf-8")
    expected = sign_webhook(_key(secret), str(msg_id), ts_int, body).split(",", 1)[1].encode("ascii")
    matched = False
    for entry in str(sigs).split():
        version, _, sig = entry.partition(",")
        # Every entry is compared (no early exit), each in constant time.
        if version == "v1" and hmac.compare_digest(sig.encode("ascii", "replace"), expected):
            matched = True
    if not matched:
        raise WebhookVerificationError("no webhook-signature matches the body and secret")
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
