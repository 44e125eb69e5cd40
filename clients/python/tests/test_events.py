"""client.events.stream: live events, replay from a cursor, and automatic resume across gateway restarts."""

import whatisup
from conftest import connect_sandbox, take, wait_for, wait_status


def test_message_received_after_sandbox_inbound(client, connected_channel):
    cid = connected_channel.id
    with client.events.stream(channel_id=cid, events=["message.*"], since="0") as stream:
        inbound = client.sandbox.inbound(cid, "+15550003333", "ping")
        events = []
        while not any(e.event == "message.received" for e in events):
            events += take(stream, 1)
        ev = events[-1]
        assert ev.channel_id == cid and ev.event_id.startswith("evt_") and ev.api_version
        assert ev.data["text"] == "ping" and ev.data["from"] == "+15550003333"
        assert ev.data["message_id"] == inbound.message_id
        assert stream.cursor
        cursor = stream.cursor
    # A stream from that cursor replays what came after it, and nothing before.
    with client.events.stream(channel_id=cid, since=cursor) as later:
        client.sandbox.inbound(cid, "+15550003333", "pong")
        nxt = take(later, 1)[0]
        assert nxt.sequence > ev.sequence
        received = nxt
        while received.event != "message.received":
            received = take(later, 1)[0]
        assert received.data["text"] == "pong"


def test_replay_from_zero_orders_the_channel_history(client):
    ch = connect_sandbox(client)
    with client.events.stream(channel_id=ch.id, since="0") as stream:
        events = []
        while not any(e.event == "channel.connected" for e in events):
            events += take(stream, 1)
    seqs = [e.sequence for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert events[0].event == "channel.status_changed"


def test_stream_resumes_across_gateway_restarts(client, restart_gateway):
    ch = connect_sandbox(client)
    cid = ch.id
    # Live from now: only message.received, so the test knows exactly what must arrive.
    stream = client.events.stream(channel_id=cid, events=["message.received"])
    with stream:
        seen = []

        def inbound(text):
            # After a SIGKILL the row still says connected until the new process has taken the session back:
            # until then the simulated phone answers not_connected, and while the session resumes it answers
            # invalid_lifecycle_transition ("it is reconnecting").
            def attempt():
                try:
                    return client.sandbox.inbound(cid, "+15550004444", text).message_id
                except whatisup.Conflict as err:
                    if err.code not in ("not_connected", "invalid_lifecycle_transition"):
                        raise
                    return None

            return wait_for(attempt, f"inbound {text!r} to be accepted", timeout=30, every=0.2)

        a = inbound("a")
        seen += take(stream, 1)
        assert seen[-1].data["message_id"] == a

        # The gateway dies under the open stream; events happen before the iterator asks again.
        restart_gateway("kill")
        wait_status(client, cid, "connected", timeout=30)
        b, c = inbound("b"), inbound("c")
        seen += take(stream, 2, timeout=60)
        assert [e.data["message_id"] for e in seen] == [a, b, c]
        assert stream.reconnects >= 1

        # A graceful restart (SIGTERM) too; then live events still flow on the resumed stream.
        before = stream.reconnects
        restart_gateway("term")
        wait_status(client, cid, "connected", timeout=30)
        d = inbound("d")
        seen += take(stream, 1, timeout=60)
        e = inbound("e")
        seen += take(stream, 1)
        assert stream.reconnects > before

    ids = [ev.data["message_id"] for ev in seen]
    assert ids == [a, b, c, d, e], "every event once, in order"
    assert len({ev.event_id for ev in seen}) == len(seen)
    seqs = [ev.sequence for ev in seen]
    assert seqs == sorted(seqs)
