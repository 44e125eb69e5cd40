"""Webhooks: a real receiver on 127.0.0.1 gets a signed delivery that verify_webhook accepts."""

import datetime as dt
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import whatisup
from conftest import connect_sandbox, wait_for


class Receiver:
    """An HTTP server on a free loopback port that records every POST and answers 200."""

    def __init__(self):
        self.requests = queue.Queue()
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                received.put((self.headers, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/whatisup"

    def next(self, timeout=30):
        try:
            return self.requests.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no webhook request arrived") from None

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_webhook_delivery_verifies(client, receiver):
    ch = connect_sandbox(client)
    endpoint = client.webhooks.create(
        receiver.url, events=["message.received"], channel_id=ch.id, description="python client test"
    )
    secret = endpoint.signing_secret
    assert endpoint.id.startswith("we_") and secret.startswith("whsec_") and endpoint.enabled
    assert not client.webhooks.get(endpoint.id).HasField("signing_secret")
    assert endpoint.id in {e.id for e in client.webhooks.list()}

    inbound = client.sandbox.inbound(ch.id, "+15550005555", "hook me")
    headers, body = receiver.next()
    # http.server's headers object as it comes (case-insensitive names), and a plain dict.
    envelope = whatisup.verify_webhook(headers, body, secret)
    assert envelope["event"] == "message.received" and envelope["channel_id"] == ch.id
    assert envelope["data"]["message_id"] == inbound.message_id and envelope["data"]["text"] == "hook me"
    assert envelope["event_id"] == headers["webhook-id"]
    plain = {k.upper(): v for k, v in headers.items()}
    assert whatisup.verify_webhook(plain, body, secret)["event_id"] == envelope["event_id"]
    with pytest.raises(whatisup.WebhookVerificationError):
        whatisup.verify_webhook(headers, body.replace(b"hook me", b"hook us"), secret)
    with pytest.raises(whatisup.WebhookVerificationError):
        whatisup.verify_webhook(headers, body + b"\n", secret)

    def delivered():
        found = [d for d in client.webhooks.deliveries(endpoint.id) if d.event_id == envelope["event_id"]]
        return found[0] if found and found[0].status == "success" else None

    delivery = wait_for(delivered, "the delivery to be recorded as success")
    detail = client.webhooks.delivery(delivery.id)
    assert detail.attempts and detail.attempts[0].http_status == 200
    assert [d.id for d in client.webhooks.deliveries(endpoint.id, status="success", page_size=1)][:1]

    # A redelivery carries the same webhook-id; after a rotation both secrets sign it.
    client.webhooks.redeliver(delivery.id)
    again_headers, again_body = receiver.next()
    assert again_headers["webhook-id"] == envelope["event_id"]
    assert whatisup.verify_webhook(again_headers, again_body, secret)
    rotated = client.webhooks.rotate_secret(endpoint.id).signing_secret
    assert rotated.startswith("whsec_") and rotated != secret
    client.webhooks.redeliver(delivery.id)
    rot_headers, rot_body = receiver.next()
    assert len(rot_headers["webhook-signature"].split()) == 2
    assert whatisup.verify_webhook(rot_headers, rot_body, rotated)
    assert whatisup.verify_webhook(rot_headers, rot_body, secret)

    updated = client.webhooks.update(endpoint.id, enabled=False, events=["message.*"], description="paused")
    assert (updated.enabled, list(updated.events), updated.description) == (False, ["message.*"], "paused")
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    assert client.webhooks.recover(endpoint.id, since) == 0
    client.webhooks.delete(endpoint.id)
    with pytest.raises(whatisup.NotFound) as e:
        client.webhooks.get(endpoint.id)
    assert e.value.code == "webhook_endpoint_not_found"
    with pytest.raises(whatisup.NotFound) as e:
        client.webhooks.delivery("dlv_999999999")
    assert e.value.code == "delivery_not_found"
