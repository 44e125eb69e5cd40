"""Channels, messages, media and API keys against the gateway in test mode (sandbox engine)."""

import re

import pytest

import whatisup
from conftest import connect_sandbox, take, unique, wait_for, wait_status

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cfc0f01f0005"
    "0001ff5cc2f5a10000000049454e44ae426082"
)


def wait_sent(client, channel_id, message_id):
    def check():
        m = client.messages.get(channel_id, message_id)
        return m if m.status == "sent" else None

    return wait_for(check, f"message {message_id} to be sent")


def test_channel_lifecycle(client):
    name = unique("life")
    ch = client.channels.create(name, metadata={"team": "support", "tier": 2})
    assert ch.id.startswith("ch_") and ch.status == "pending" and ch.engine == "sandbox"
    assert whatisup.to_dict(ch)["metadata"] == {"team": "support", "tier": 2.0}
    assert client.channels.get(ch.id).name == name

    qr = client.channels.qr(ch.id, wait=10)
    assert qr.qr and qr.png.startswith("data:image/png;base64,") and qr.HasField("expires_at")
    client.sandbox.scan(ch.id, phone_number="+15550001234")
    connected = wait_status(client, ch.id, "connected")
    assert connected.phone_number == "+15550001234"
    with pytest.raises(whatisup.Conflict) as e:
        client.channels.qr(ch.id, wait=1)
    assert e.value.code == "no_qr"

    sent = client.messages.send(ch.id, "+15551234567", text="hello from python", client_ref="ref-1")
    assert sent.message_id.startswith("msg_") and sent.status in ("queued", "sent")
    msg = wait_sent(client, ch.id, sent.message_id)
    assert msg.text == "hello from python" and msg.to == "+15551234567" and msg.whatsapp_id
    assert [h.status for h in msg.history][-1] == "sent"
    # The same client_ref is the same message, sent once.
    again = client.messages.send(ch.id, "+15551234567", text="hello from python", client_ref="ref-1")
    assert again.message_id == sent.message_id
    with pytest.raises(whatisup.NotFound) as e:
        client.messages.get(ch.id, "msg_01AAAAAAAAAAAAAAAAAAAAAAAA")
    assert e.value.code == "message_not_found"

    client.channels.logout(ch.id)
    out = wait_status(client, ch.id, "disconnected")
    assert out.status_reason == "logout"
    client.channels.connect(ch.id)
    deleted = client.channels.delete(ch.id)
    assert deleted.HasField("deleted_at")
    assert ch.id not in {c.id for c in client.channels.list()}


def test_list_iterates_every_page(client):
    status = None
    ids = {client.channels.create(unique("page")).id for _ in range(3)}
    first = client.channels.list_page(limit=2)
    assert len(first.data) == 2 and first.next_cursor
    listed = [c.id for c in client.channels.list(status=status, page_size=2)]
    assert ids <= set(listed)
    assert len(listed) == len(set(listed))
    pending = [c.status for c in client.channels.list(status="pending", page_size=2)]
    assert pending and set(pending) == {"pending"}


def test_pair_code(client):
    ch = client.channels.create(unique("pair"))
    code = client.channels.pair_code(ch.id, "+15551230000")
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code.code), code.code
    assert code.HasField("expires_at")


def test_send_kinds_and_idempotency_key(client, connected_channel):
    cid = connected_channel.id
    media = client.media.upload(cid, PNG, "image/png", filename="dot.png")
    assert media.media_id.startswith("med_") and media.size == len(PNG) and media.mime_type == "image/png"
    by_id = client.messages.send(cid, "+15551234567", image=media.media_id, caption="a dot")
    by_bytes = client.messages.send(cid, "+15551234567", image=PNG, mime_type="image/png")
    located = client.messages.send(cid, "+15551234567", location=(52.52, 13.405))
    text = client.messages.send(cid, "+15551234567", text="first")
    reply = client.messages.send(cid, "+15551234567", text="second", reply_to=text.message_id)
    reacted = client.messages.send(cid, "+15551234567", reaction=(text.message_id, "👍"))
    for m in (by_id, by_bytes, located, text, reply, reacted):
        wait_sent(client, cid, m.message_id)
    assert client.messages.get(cid, by_id.message_id).media.sha256 == media.sha256
    loc = client.messages.get(cid, located.message_id).location
    assert (loc.latitude, loc.longitude) == (52.52, 13.405)
    assert client.messages.get(cid, reply.message_id).reply_to == text.message_id
    assert client.messages.get(cid, reacted.message_id).reaction.emoji == "👍"

    key = unique("idem")
    one = client.messages.send(cid, "+15551234567", text="once", idempotency_key=key)
    two = client.messages.send(cid, "+15551234567", text="once", idempotency_key=key)
    assert one.message_id == two.message_id
    with pytest.raises(whatisup.Conflict) as e:
        client.messages.send(cid, "+15551234567", text="something else", idempotency_key=key)
    assert e.value.code == "idempotency_conflict"
    with pytest.raises(ValueError):
        client.messages.send(cid, "+15551234567", text="x", location=(1, 2))


def test_api_keys(client, target):
    created = client.api_keys.create(unique("key"))
    assert created.secret.startswith("zpk_test_") and created.api_key.mode == "test"
    assert created.api_key.id in {k.id for k in client.api_keys.list()}
    with whatisup.Client(created.secret, target=target) as other:
        ch = other.channels.create(unique("by-new-key"))
        assert client.channels.get(ch.id).id == ch.id
    client.api_keys.delete(created.api_key.id)
    with whatisup.Client(created.secret, target=target) as other:
        with pytest.raises(whatisup.AuthError):
            other.channels.get(ch.id)
    with pytest.raises(whatisup.NotFound) as e:
        client.api_keys.delete("key_01AAAAAAAAAAAAAAAAAAAAAAAA")
    assert e.value.code == "api_key_not_found"


def test_sandbox_network_drop_resumes(client):
    ch = connect_sandbox(client)
    with client.events.stream(channel_id=ch.id, events=["channel.*"], since="0") as stream:
        client.sandbox.drop(ch.id, duration_ms=200)
        seen = []
        # The blip as events: connected → reconnecting → ... → connected again.
        while not (
            any(e.event == "channel.disconnected" for e in seen) and seen[-1].event == "channel.connected"
        ):
            seen += take(stream, 1)
    transitions = [e.data["to"] for e in seen if e.event == "channel.status_changed"]
    assert "reconnecting" in transitions and transitions[-1] == "connected", transitions
    inbound = client.sandbox.inbound(ch.id, "+15550002222", "hello")
    assert inbound.message_id
    sent = client.messages.send(ch.id, "+15550002222", text="answer")
    wait_sent(client, ch.id, sent.message_id)
    client.sandbox.receipt(ch.id, sent.message_id, "read")
    wait_for(lambda: client.messages.get(ch.id, sent.message_id).status == "read", "the read receipt")
