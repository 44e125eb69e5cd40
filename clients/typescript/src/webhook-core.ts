// What verifyWebhook (WebCrypto) and verifyWebhookSync (node:crypto) share: header parsing, the signed content,
// the timestamp window and a constant-time comparison.

/** Headers as they come: fetch's Headers, Node's IncomingHttpHeaders, or a plain object (any case). */
export type WebhookHeaders =
  | { get(name: string): string | null }
  | Record<string, string | string[] | undefined>;

export interface VerifyOptions {
  /** Seconds a timestamp may be off from now, either way (replay window). Default 300. */
  toleranceSec?: number;
  /** "Now" in unix seconds, for tests. */
  now?: number;
}

/** The event envelope a delivery carries (contract §5). */
export interface WebhookEvent {
  event: string;
  event_id: string;
  api_version: string;
  channel_id: string;
  sequence: number;
  occurred_at: string;
  data: Record<string, unknown>;
}

export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookVerificationError";
  }
}

export interface Parsed {
  id: string;
  timestamp: string;
  signatures: Uint8Array[];
  key: Uint8Array;
  content: Uint8Array;
  body: Uint8Array;
}

// A delivery carries one signature per active secret (two while a rotated secret overlaps): a few, never many.
const MAX_SIGNATURES = 16;

function header(h: WebhookHeaders, name: string): string | undefined {
  if (typeof (h as { get?: unknown }).get === "function") {
    return (h as { get(n: string): string | null }).get(name) ?? undefined;
  }
  const rec = h as Record<string, string | string[] | undefined>;
  for (const k of Object.keys(rec)) {
    if (k.toLowerCase() === name) {
      const v = rec[k];
      return Array.isArray(v) ? v.join(" ") : v;
    }
  }
  return undefined;
}

export function base64Decode(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function parse(headers: WebhookHeaders, body: string | Uint8Array, secret: string, opts: VerifyOptions): Parsed {
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const sigHeader = header(headers, "webhook-signature");
  if (!id || !timestamp || !sigHeader) {
    throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header");
  }
  if (!/^\d{1,12}$/.test(timestamp)) throw new WebhookVerificationError("webhook-timestamp is not unix seconds");
  const tolerance = opts.toleranceSec ?? 300;
  const now = opts.now ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - Number(timestamp)) > tolerance) {
    throw new WebhookVerificationError("webhook-timestamp is outside the tolerance window");
  }
  let key: Uint8Array;
  try {
    key = base64Decode(secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret);
  } catch {
    throw new WebhookVerificationError("the signing secret is not whsec_<base64>");
  }
  if (key.length === 0) throw new WebhookVerificationError("the signing secret is empty");
  const signatures: Uint8Array[] = [];
  for (const part of sigHeader.split(" ").slice(0, MAX_SIGNATURES)) {
    const [version, sig] = part.split(",", 2);
    if (version !== "v1" || !sig) continue;
    try {
      signatures.push(base64Decode(sig));
    } catch {
      // A malformed entry cannot match; the others may.
    }
  }
  if (signatures.length === 0) throw new WebhookVerificationError("no v1 signature in webhook-signature");
  const bodyBytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  const prefix = new TextEncoder().encode(`${id}.${timestamp}.`);
  const content = new Uint8Array(prefix.length + bodyBytes.length);
  content.set(prefix, 0);
  content.set(bodyBytes, prefix.length);
  return { id, timestamp, signatures, key, content, body: bodyBytes };
}

/** Constant-time for equal lengths (the length of an HMAC-SHA256 is public). */
export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

export function finish(p: Parsed, expected: Uint8Array, compare: (a: Uint8Array, b: Uint8Array) => boolean): WebhookEvent {
  // Compare against every entry (no early exit), so timing does not tell which one matched.
  let ok = false;
  for (const s of p.signatures) ok = compare(s, expected) || ok;
  if (!ok) throw new WebhookVerificationError("no signature matches");
  try {
    return JSON.parse(new TextDecoder().decode(p.body)) as WebhookEvent;
  } catch {
    throw new WebhookVerificationError("the body is not JSON");
  }
}
