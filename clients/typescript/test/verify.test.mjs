// verifyWebhook without a server: Standard Webhooks test vectors computed here with node:crypto.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { verifyWebhook, WebhookVerificationError } from "../dist/index.js";
import { verifyWebhookSync } from "../dist/node.js";

const key = Buffer.alloc(32, 1);
const secret = "whsec_" + key.toString("base64");
const now = 1_700_000_000;
const body = JSON.stringify({ event: "message.received", event_id: "evt_1", data: { text: "é" } });
const sign = (k, id, ts, b) => createHmac("sha256", k).update(`${id}.${ts}.${b}`).digest("base64");
const headers = (sig, ts = now) => ({ "webhook-id": "evt_1", "webhook-timestamp": String(ts), "webhook-signature": sig });

test("a valid signature verifies, sync and async, with any header case", async () => {
  const h = headers(`v1,${sign(key, "evt_1", now, body)}`);
  assert.equal((await verifyWebhook(h, body, secret, { now })).event_id, "evt_1");
  assert.equal(verifyWebhookSync(h, Buffer.from(body), secret, { now }).data.text, "é");
  const upper = { "Webhook-Id": "evt_1", "Webhook-Timestamp": String(now), "Webhook-Signature": h["webhook-signature"] };
  assert.equal(verifyWebhookSync(upper, body, secret, { now }).event, "message.received");
});

test("any of several signatures may match (rotation overlap); unknown versions are skipped", () => {
  const other = Buffer.alloc(32, 2);
  const h = headers(`v2,xyz v1,${sign(other, "evt_1", now, body)} v1,${sign(key, "evt_1", now, body)}`);
  assert.ok(verifyWebhookSync(h, body, secret, { now }));
  assert.throws(() => verifyWebhookSync(headers(`v1,${sign(other, "evt_1", now, body)}`), body, secret, { now }), WebhookVerificationError);
});

test("refused: tampered body, other id, stale or future timestamp, missing headers, no v1 entry", async () => {
  const good = `v1,${sign(key, "evt_1", now, body)}`;
  const cases = [
    [headers(good), body.replace("é", "e")],
    [{ ...headers(good), "webhook-id": "evt_2" }, body],
    [headers(good, now - 301), body],
    [headers(good, now + 301), body],
    [{ "webhook-id": "evt_1", "webhook-signature": good }, body],
    [headers(good.replace("v1,", "v0,")), body],
    [headers(good, "12x"), body],
  ];
  for (const [h, b] of cases) {
    assert.throws(() => verifyWebhookSync(h, b, secret, { now }), WebhookVerificationError, JSON.stringify(h));
    await assert.rejects(verifyWebhook(h, b, secret, { now }), WebhookVerificationError);
  }
  // Within a wider window the old timestamp passes (but it was signed with that timestamp).
  const old = now - 301;
  assert.ok(verifyWebhookSync(headers(`v1,${sign(key, "evt_1", old, body)}`, old), body, secret, { now, toleranceSec: 600 }));
});
