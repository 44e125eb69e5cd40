// Standard Webhooks verification with WebCrypto: the same code runs in browsers, Deno, workers and Node.js 20+.
import { equal, finish, parse, type VerifyOptions, type WebhookEvent, type WebhookHeaders } from "./webhook-core.js";

export { WebhookVerificationError, type VerifyOptions, type WebhookEvent, type WebhookHeaders } from "./webhook-core.js";

/**
 * Checks a delivery's `webhook-signature` (`v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`,
 * several entries space-separated while a rotated secret overlaps) against the endpoint's `whsec_` secret, and its
 * `webhook-timestamp` against a replay window. `body` must be the raw bytes as received. Resolves to the parsed
 * event, or rejects with WebhookVerificationError.
 */
export async function verifyWebhook(
  headers: WebhookHeaders,
  body: string | Uint8Array,
  secret: string,
  opts: VerifyOptions = {},
): Promise<WebhookEvent> {
  const p = parse(headers, body, secret, opts);
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new Error("WebCrypto (crypto.subtle) is not available here; use verifyWebhookSync from @whatisup/client/node");
  const key = await subtle.importKey("raw", p.key as BufferSource, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = new Uint8Array(await subtle.sign("HMAC", key, p.content as BufferSource));
  return finish(p, mac, equal);
}
