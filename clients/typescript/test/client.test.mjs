// The client against a real gateway in test mode (sandbox engine): lifecycle, sends, the event stream, errors,
// webhooks verified end to end, keys, media, and grpc-web.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { Code } from "@connectrpc/connect";
import {
  AuthError,
  ConflictError,
  InvalidRequestError,
  NotFoundError,
  WebhookVerificationError,
  WhatisupError,
  createClient,
  timestampDate,
  verifyWebhook,
} from "../dist/index.js";
import { verifyWebhookSync } from "../dist/node.js";
import { API_KEY, BASE_URL, LIVE_KEY, client, collect, connectedChannel, eventually, waitStatus } from "./helpers.mjs";

test("lifecycle: create, QR, sandbox scan, connected; list every page; delete", async () => {
  const c = client();
  assert.equal(c.transport, "grpc");
  const ch = await c.channels.create({ name: "ts-lifecycle", metadata: { team: "ts", n: 1 } });
  assert.match(ch.id, /^ch_/);
  assert.equal(ch.status, "pending");
  assert.equal(ch.engine, "sandbox");
  assert.deepEqual(ch.metadata, { team: "ts", n: 1 });
  assert.ok(timestampDate(ch.createdAt) instanceof Date);

  const ac = new AbortController();
  const events = collect(c.events.stream({ channelId: ch.id, since: "0", signal: ac.signal }));
  const qr = await c.channels.qr(ch.id, { wait: 10 });
  assert.ok(qr.qr.length > 0);
  assert.match(qr.png, /^data:image\/png;base64,/);
  await events.waitFor((e) => e.event.event === "qr.updated");
  await c.sandbox.scan(ch.id, { phoneNumber: "+15550001111" });
  const connected = await events.waitFor((e) => e.event.event === "channel.connected");
  assert.equal(connected.event.data?.phone_number, "+15550001111");
  assert.equal(connected.event.channelId, ch.id);
  const got = await c.channels.get(ch.id);
  assert.equal(got.status, "connected");
  assert.equal(got.phoneNumber, "+15550001111");
  ac.abort();
  await events.done;
  assert.equal(events.error, undefined);

  // The iterator walks every page: one channel per page here.
  const others = [await c.channels.create({ name: "ts-page-1" }), await c.channels.create({ name: "ts-page-2" })];
  const seen = [];
  for await (const x of c.channels.list({ pageSize: 1 })) seen.push(x.id);
  assert.equal(new Set(seen).size, seen.length, "no channel twice");
  for (const id of [ch.id, ...others.map((o) => o.id)]) assert.ok(seen.includes(id), `${id} listed`);
  const page = await c.channels.listPage({ limit: 1 });
  assert.equal(page.data.length, 1);
  assert.ok(page.nextCursor);

  const deleted = await c.channels.delete(others[0].id);
  assert.ok(deleted.deletedAt);
  const after = [];
  for await (const x of c.channels.list()) after.push(x.id);
  assert.ok(!after.includes(others[0].id), "deleted channels are not listed");

  // logout, then connect again from disconnected.
  const out = await c.channels.logout(ch.id);
  assert.equal(out.id, ch.id);
  await waitStatus(c, ch.id, "disconnected");
  const again = await c.channels.connect(ch.id);
  assert.equal(again.id, ch.id);
});

test("send: accepted durably, then sent; a repeated client_ref answers the same message", async () => {
  const c = client();
  const ch = await connectedChannel(c, "ts-send");
  const r = await c.messages.send({ channelId: ch.id, to: "+15551234567", text: "hello from TypeScript", clientRef: "ts-1" });
  assert.match(r.messageId, /^msg_/);
  assert.ok(["queued", "sent"].includes(r.status), r.status);
  const sent = await eventually(async () => {
    const m = await c.messages.get(ch.id, r.messageId);
    return m.status === "sent" ? m : undefined;
  }, 20000, "message sent");
  assert.equal(sent.text, "hello from TypeScript");
  assert.ok(sent.history.some((h) => h.status === "sent"));
  assert.ok(sent.whatsappId.length > 0);
  const again = await c.messages.send({ channelId: ch.id, to: "+15551234567", text: "hello from TypeScript", clientRef: "ts-1" });
  assert.equal(again.messageId, r.messageId);
});

test("stream: message.received after a sandbox inbound", async () => {
  const c = client();
  const ch = await connectedChannel(c, "ts-inbound");
  const ac = new AbortController();
  const stream = c.events.stream({ channelId: ch.id, events: ["message.*"], since: "0", signal: ac.signal });
  const events = collect(stream);
  const r = await c.sandbox.inbound(ch.id, { from: "+15559876543", text: "hi from the phone" });
  assert.ok(r.messageId);
  const got = await events.waitFor((e) => e.event.event === "message.received");
  assert.equal(got.event.data?.text, "hi from the phone");
  assert.equal(got.event.data?.from, "+15559876543");
  assert.match(got.event.eventId, /^evt_/);
  assert.equal(stream.cursor, events.items.at(-1).cursor);
  // Only message.* came, as asked.
  assert.ok(events.items.every((e) => e.event.event.startsWith("message.")));
  ac.abort();
  await events.done;
});

test("errors carry the contract's code and map to classes", async () => {
  const c = client();
  await assert.rejects(c.channels.get("ch_01JZZZZZZZZZZZZZZZZZZZZZZZ"), (e) => {
    assert.ok(e instanceof NotFoundError && e instanceof WhatisupError, String(e));
    assert.equal(e.code, "channel_not_found");
    assert.equal(e.grpcCode, Code.NotFound);
    return true;
  });
  const bad = createClient({ apiKey: "zpk_test_not-a-real-key-at-all-000000000000", baseUrl: BASE_URL });
  await assert.rejects(bad.channels.list().next(), (e) => {
    assert.ok(e instanceof AuthError, String(e));
    assert.match(e.code, /^auth_/);
    assert.equal(e.grpcCode, Code.Unauthenticated);
    return true;
  });
  await assert.rejects(c.channels.create({ name: "" }), (e) => {
    assert.ok(e instanceof InvalidRequestError, String(e));
    assert.equal(e.code, "invalid_request");
    assert.equal(e.details.field, "name");
    return true;
  });
  const pending = await c.channels.create({ name: "ts-pending" });
  await assert.rejects(c.messages.send({ channelId: pending.id, to: "+15551234567", text: "x" }), (e) => {
    assert.ok(e instanceof ConflictError, String(e));
    assert.equal(e.code, "not_connected");
    return true;
  });
  if (LIVE_KEY) {
    const live = createClient({ apiKey: LIVE_KEY, baseUrl: BASE_URL });
    const lc = await live.channels.create({ name: "ts-live" });
    assert.equal(lc.engine, "whatsapp");
    await assert.rejects(live.sandbox.scan(lc.id), (e) => e instanceof ConflictError && e.code === "not_sandbox");
    // Test-mode keys do not see live channels: 404, never 403.
    await assert.rejects(c.channels.get(lc.id), (e) => e instanceof NotFoundError && e.code === "channel_not_found");
    await live.channels.delete(lc.id);
  }
  // A stream refused at the start throws (no endless retry) with the mapped error.
  const it = c.events.stream({ channelId: "ch_01JZZZZZZZZZZZZZZZZZZZZZZZ" })[Symbol.asyncIterator]();
  await assert.rejects(it.next(), (e) => e instanceof NotFoundError && e.code === "channel_not_found");
  const it2 = c.events.stream({ events: ["no such pattern!"] })[Symbol.asyncIterator]();
  await assert.rejects(it2.next(), (e) => e instanceof InvalidRequestError && e.details.field === "events");
});

test("grpc-web: the browser transport works (unary, stream, errors)", async () => {
  const web = client({ transport: "grpc-web" });
  assert.equal(web.transport, "grpc-web");
  const ch = await web.channels.create({ name: "ts-grpc-web" });
  const got = await web.channels.get(ch.id);
  assert.equal(got.name, "ts-grpc-web");
  await assert.rejects(web.channels.get("ch_01JZZZZZZZZZZZZZZZZZZZZZZZ"), (e) => e instanceof NotFoundError && e.code === "channel_not_found");
  const ac = new AbortController();
  const events = collect(web.events.stream({ channelId: ch.id, since: "0", signal: ac.signal }));
  const qr = await web.channels.qr(ch.id, { wait: 10 });
  const ev = await events.waitFor((e) => e.event.event === "qr.updated");
  assert.equal(ev.event.channelId, ch.id);
  assert.equal(ev.event.data?.qr, qr.qr);
  ac.abort();
  await events.done;
  assert.equal(events.error, undefined);
});

test("webhooks: a real delivery verifies; a tampered body or a wrong secret does not", async () => {
  const c = client();
  const ch = await connectedChannel(c, "ts-webhooks");
  const deliveries = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (d) => chunks.push(d));
    req.on("end", () => {
      deliveries.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200).end("ok");
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const url = `http://127.0.0.1:${server.address().port}/hook`;
    const ep = await c.webhooks.create({ url, events: ["message.received"], channelId: ch.id, description: "ts" });
    assert.match(ep.id, /^we_/);
    assert.match(ep.signingSecret ?? "", /^whsec_/);
    const secret = ep.signingSecret;
    assert.ok((await c.webhooks.list()).some((w) => w.id === ep.id));
    assert.equal((await c.webhooks.get(ep.id)).signingSecret, undefined, "the secret is shown only once");

    await c.sandbox.inbound(ch.id, { from: "+15550002222", text: "to the webhook" });
    const d = await eventually(() => deliveries[0], 20000, "a webhook delivery");
    const ev = await verifyWebhook(d.headers, d.body, secret);
    assert.equal(ev.event, "message.received");
    assert.equal(ev.event_id, d.headers["webhook-id"]);
    assert.equal(ev.data.text, "to the webhook");
    assert.equal(verifyWebhookSync(d.headers, d.body, secret).event_id, ev.event_id);
    // The same check through fetch's Headers, and with the body as a string.
    assert.equal((await verifyWebhook(new Headers(d.headers), d.body.toString("utf8"), secret)).event_id, ev.event_id);

    const tampered = Buffer.from(d.body.toString("utf8").replace("to the webhook", "to the webhooK"));
    await assert.rejects(verifyWebhook(d.headers, tampered, secret), WebhookVerificationError);
    assert.throws(() => verifyWebhookSync(d.headers, tampered, secret), WebhookVerificationError);
    const other = "whsec_" + Buffer.alloc(32, 7).toString("base64");
    await assert.rejects(verifyWebhook(d.headers, d.body, other), WebhookVerificationError);
    // An old delivery replayed later is refused by the timestamp window.
    const late = Number(d.headers["webhook-timestamp"]) + 301;
    await assert.rejects(verifyWebhook(d.headers, d.body, secret, { now: late }), WebhookVerificationError);
    assert.ok(await verifyWebhook(d.headers, d.body, secret, { now: late, toleranceSec: 400 }));

    const list = [];
    for await (const x of c.webhooks.deliveries.list({ endpointId: ep.id })) list.push(x);
    assert.ok(list.length >= 1);
    const one = await eventually(async () => {
      const x = await c.webhooks.deliveries.get(list[0].id);
      return x.status === "success" ? x : undefined;
    }, 10000, "delivery success");
    assert.ok(one.attempts.length >= 1);

    // After a rotation both secrets sign: either verifies the next delivery.
    const rotated = await c.webhooks.rotateSecret(ep.id);
    assert.notEqual(rotated.signingSecret, secret);
    await c.sandbox.inbound(ch.id, { from: "+15550002222", text: "after rotation" });
    const d2 = await eventually(() => deliveries.find((x) => x.body.includes("after rotation")), 20000, "a second delivery");
    assert.ok(String(d2.headers["webhook-signature"]).includes(" "), "two signatures while secrets overlap");
    await verifyWebhook(d2.headers, d2.body, secret);
    await verifyWebhook(d2.headers, d2.body, rotated.signingSecret);

    const off = await c.webhooks.update(ep.id, { enabled: false, events: ["message.*"] });
    assert.equal(off.enabled, false);
    assert.deepEqual(off.events, ["message.*"]);
    await c.webhooks.delete(ep.id);
    await assert.rejects(c.webhooks.get(ep.id), (e) => e instanceof NotFoundError && e.code === "webhook_endpoint_not_found");
  } finally {
    server.close();
  }
});

test("api keys and media", async () => {
  const c = client();
  const ch = await connectedChannel(c, "ts-keys");
  const k = await c.apiKeys.create({ name: "ts-scoped", channelId: ch.id });
  assert.match(k.secret, /^zpk_test_/);
  assert.equal(k.apiKey?.channelId, ch.id);
  assert.ok((await c.apiKeys.list()).some((x) => x.id === k.apiKey?.id));
  const scoped = createClient({ apiKey: k.secret, baseUrl: BASE_URL });
  assert.equal((await scoped.channels.get(ch.id)).id, ch.id);
  const other = await c.channels.create({ name: "ts-other" });
  await assert.rejects(scoped.channels.get(other.id), (e) => e instanceof AuthError || e instanceof NotFoundError);
  await c.apiKeys.delete(k.apiKey.id);
  assert.ok(!(await c.apiKeys.list()).some((x) => x.id === k.apiKey?.id));

  const png = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
    "base64",
  );
  const up = await c.media.upload({ channelId: ch.id, data: png, mimeType: "image/png", filename: "dot.png" });
  assert.match(up.mediaId, /^med_/);
  assert.equal(up.size, png.length);
  assert.equal(up.sha256, createHash("sha256").update(png).digest("hex"));
  const m = await c.messages.send({ channelId: ch.id, to: "+15551234567", type: "image", mediaId: up.mediaId, caption: "a dot" });
  assert.match(m.messageId, /^msg_/);
  assert.ok(API_KEY.startsWith("zpk_test_"));
});

test("pair code: requested for a number, the simulated phone pairs as that number", async () => {
  const c = client();
  const ch = await c.channels.create({ name: "ts-pair" });
  await assert.rejects(c.channels.pairCode(ch.id, "5551234"), (e) => e instanceof InvalidRequestError && e.details.field === "phone_number");
  const pc = await c.channels.pairCode(ch.id, "+15557654321");
  assert.match(pc.code, /^.{4}-.{4}$/);
  assert.ok(pc.expiresAt);
  await c.sandbox.scan(ch.id);
  const got = await waitStatus(c, ch.id, "connected");
  assert.equal(got.phoneNumber, "+15557654321");
});
