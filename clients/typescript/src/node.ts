// Node.js-only helpers (node:crypto): a synchronous webhook verifier for request handlers that cannot await.
import { createHmac, timingSafeEqual } from "node:crypto";
import { finish, parse, type VerifyOptions, type WebhookEvent, type WebhookHeaders } from "./webhook-core.js";

export { WebhookVerificationError, type VerifyOptions, type WebhookEvent, type WebhookHeaders } from "./webhook-core.js";

/** Like verifyWebhook, synchronously, with node:crypto's HMAC and timingSafeEqual. Throws WebhookVerificationError. */
export function verifyWebhookSync(
  headers: WebhookHeaders,
  body: string | Uint8Array,
  secret: string,
  opts: VerifyOptions = {},
): WebhookEvent {
  const p = parse(headers, body, secret, opts);
  const mac = createHmac("sha256", p.key).update(p.content).digest();
  return finish(p, new Uint8Array(mac), (a, b) => a.length === b.length && timingSafeEqual(a, b));
}
