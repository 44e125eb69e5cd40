"""verify_webhook against the Standard Webhooks specification (no gateway needed)."""

import base64
import json

import pytest

from whatisup import WebhookVerificationError, sign_webhook, verify_webhook

# The example of the Standard Webhooks specification (the gateway's signing test uses it too).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(sig=SIG, ts=TS, msg_id=MSG_ID):
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_specification_vector():
    assert sign_webhook(SECRET, MSG_ID, TS, BODY) == SIG
    assert verify_webhook(headers(), BODY, SECRET, now=TS) == {"test": 2432232314}


def test_header_names_are_case_insensitive_and_pairs_work():
    upper = {k.upper(): v for k, v in headers().items()}
    assert verify_webhook(upper, BODY, SECRET, now=TS)["test"] == 2432232314
    pairs = [("Webhook-Id", MSG_ID), ("Webhook-Timestamp", str(TS)), ("Webhook-Signature", SIG)]
    assert verify_webhook(pairs, BODY.decode(), SECRET, now=TS)["test"] == 2432232314


def test_any_of_several_signatures():
    other = sign_webhook("whsec_" + base64.b64encode(b"k" * 32).decode(), MSG_ID, TS, BODY)
    assert verify_webhook(headers(f"{other} {SIG}"), BODY, SECRET, now=TS)
    assert verify_webhook(headers(f"v2,abc {SIG}"), BODY, SECRET, now=TS)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers(other), BODY, SECRET, now=TS)


@pytest.mark.parametrize(
    "change",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: (h, b.replace(b"2432232314", b"2432232315")),
        lambda h, b: ({**h, "webhook-id": "msg_other"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(TS + 1)}, b),
        lambda h, b: ({**h, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}, b),
        lambda h, b: ({**h, "webhook-signature": SIG.replace("v1,", "v2,")}, b),
        lambda h, b: ({**h, "webhook-signature": ""}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b),
        lambda h, b: ({**h, "webhook-timestamp": "yesterday"}, b),
    ],
)
def test_tampering_is_refused(change):
    h, b = change(headers(), BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(h, b, SECRET, now=TS)


def test_timestamp_tolerance():
    assert verify_webhook(headers(), BODY, SECRET, now=TS + 299)
    assert verify_webhook(headers(), BODY, SECRET, now=TS - 299)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(headers(), BODY, SECRET, now=TS + 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(headers(), BODY, SECRET, now=TS - 301)
    assert verify_webhook(headers(), BODY, SECRET, tolerance=3600, now=TS + 3000)


def test_wrong_or_malformed_secret():
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers(), BODY, "whsec_" + base64.b64encode(b"z" * 32).decode(), now=TS)
    with pytest.raises(WebhookVerificationError, match="base64"):
        verify_webhook(headers(), BODY, "whsec_not base64!", now=TS)


def test_body_must_be_json():
    body = b"not json"
    sig = sign_webhook(SECRET, MSG_ID, TS, body)
    with pytest.raises(WebhookVerificationError, match="JSON"):
        verify_webhook(headers(sig), body, SECRET, now=TS)
    assert json.loads(BODY) == verify_webhook(headers(), BODY, SECRET, now=TS)
