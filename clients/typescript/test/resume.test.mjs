// The event stream survives a gateway restart: the harness stops the gateway and starts it again on the same
// port and database; the iterator reconnects by itself from its last cursor. One channel's sequence numbers go up
// by one per event, so the stream must show 1, 2, 3, ... with no hole (nothing lost) and no repeat.
import { test } from "node:test";
import assert from "node:assert/strict";
import { client, collect, connectedChannel, restartGateway, waitStatus } from "./helpers.mjs";

test("the event stream resumes after the gateway restarts: no gap, no duplicate", async () => {
  const c = client();
  const ch = await connectedChannel(c, "ts-resume");
  const ac = new AbortController();
  const errors = [];
  const stream = c.events.stream({
    channelId: ch.id,
    since: "0",
    signal: ac.signal,
    initialBackoffMs: 100,
    maxBackoffMs: 1000,
    onReconnect: (_n, e) => errors.push(e),
  });
  const events = collect(stream);
  await c.sandbox.inbound(ch.id, { from: "+15550003333", text: "before the restart" });
  await events.waitFor((e) => e.event.data?.text === "before the restart");

  await restartGateway();
  // The session resumes from its persisted state on the new gateway; the calls wait for it to answer.
  await waitStatus(c, ch.id, "connected", 30000);
  await c.sandbox.inbound(ch.id, { from: "+15550003333", text: "after the restart" });
  await events.waitFor((e) => e.event.data?.text === "after the restart", 30000);
  ac.abort();
  await events.done;

  assert.ok(stream.reconnects >= 1, "the stream was re-opened");
  const seqs = events.items.map((e) => Number(e.event.sequence));
  assert.equal(seqs[0], 1, "since 0 replays from the first event");
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `contiguous sequences: ${seqs}`);
  assert.equal(new Set(events.items.map((e) => e.event.eventId)).size, events.items.length);
  // The restart's own transitions (reconnecting, then connected again) came through the resumed stream.
  const names = events.items.map((e) => e.event.event);
  assert.ok(names.lastIndexOf("channel.connected") > names.indexOf("message.received"), names.join(", "));
});
