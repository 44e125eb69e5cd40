"""Schemathesis hooks for tests/it/fuzz.rs: a check that every error answer is the contract's envelope.

The table below is the contract's (CONTRACT.md §3), written out independently of the server's code, so a code the
server invents or answers under the wrong status fails here.
"""

import schemathesis

# HTTP status -> the error codes the contract allows under it.
CODES = {
    400: {"invalid_request"},
    401: {"auth_missing", "auth_malformed", "auth_invalid", "auth_expired"},
    403: {"channel_access_denied", "channel_scoped_key"},
    404: {
        "channel_not_found",
        "message_not_found",
        "webhook_endpoint_not_found",
        "delivery_not_found",
        "api_key_not_found",
        "not_found",
    },
    # A method a path does not serve: the envelope with invalid_request (field "method").
    405: {"invalid_request"},
    409: {
        "invalid_lifecycle_transition",
        "not_connected",
        "no_qr",
        "not_sandbox",
        "idempotency_conflict",
        "concurrent_modification",
    },
    413: {"payload_too_large"},
    429: {"rate_limited"},
    500: {"internal"},
    503: {"unavailable"},
}


@schemathesis.check
def error_envelope(ctx, response, case):
    """Every 4xx/5xx answer is {"error": {"code", "message", "details"}, "request_id"} with a contract code."""
    status = response.status_code
    if status < 400:
        return None
    where = f"{case.method} {case.formatted_path} -> {status}"
    allowed = CODES.get(status)
    if allowed is None:
        raise AssertionError(f"{where}: the contract has no error code for HTTP {status}")
    content_type = response.headers.get("content-type", [""])
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else ""
    if not content_type.startswith("application/json"):
        raise AssertionError(f"{where}: error answered with Content-Type {content_type!r}, not JSON")
    try:
        body = response.json()
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        raise AssertionError(f"{where}: error body is not JSON ({e}): {response.text[:300]!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        raise AssertionError(f"{where}: no error envelope: {str(body)[:300]}")
    err = body["error"]
    code = err.get("code")
    if code not in allowed:
        raise AssertionError(f"{where}: code {code!r} is not one of {sorted(allowed)}")
    if not isinstance(err.get("message"), str) or not err["message"]:
        raise AssertionError(f"{where}: error.message missing")
    if not isinstance(err.get("details"), dict):
        raise AssertionError(f"{where}: error.details is not an object")
    if not isinstance(body.get("request_id"), str) or not body["request_id"].startswith("req_"):
        raise AssertionError(f"{where}: request_id missing")
    if status == 429 and "retry-after" not in {k.lower() for k in response.headers}:
        raise AssertionError(f"{where}: 429 without Retry-After")
    return None
