// Errors of the gateway as typed exceptions. The gateway puts google.rpc.ErrorInfo{reason: <contract code>} into
// every gRPC error (grpc-status-details-bin); `code` is that reason, e.g. "channel_not_found".
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

const ERROR_INFO = "google.rpc.ErrorInfo";

/** Any error answered by the gateway (or by the transport on the way to it). */
export class WhatisupError extends Error {
  /** The contract's error code (ErrorInfo reason), e.g. "channel_not_found"; "unknown" when the answer had none. */
  readonly code: string;
  /** The gRPC status code (Connect's `Code` enum). */
  readonly grpcCode: Code;
  /** ErrorInfo metadata: e.g. `{ field: "name" }` for invalid_request. */
  readonly details: Record<string, string>;

  constructor(message: string, code: string, grpcCode: Code, details: Record<string, string>, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.code = code;
    this.grpcCode = grpcCode;
    this.details = details;
  }
}

/** 404: channel_not_found, message_not_found, webhook_endpoint_not_found, delivery_not_found, ... */
export class NotFoundError extends WhatisupError {}
/** 401 auth_* and 403 channel_access_denied / channel_scoped_key. */
export class AuthError extends WhatisupError {}
/** 429 rate_limited. */
export class RateLimitedError extends WhatisupError {
  /** Seconds to wait, when the gateway said (retry-after metadata). */
  readonly retryAfter: number | undefined;
  constructor(message: string, code: string, grpcCode: Code, details: Record<string, string>, cause: unknown, retryAfter?: number) {
    super(message, code, grpcCode, details, cause);
    this.retryAfter = retryAfter;
  }
}
/** 400 invalid_request (details.field names the field), payload_too_large. */
export class InvalidRequestError extends WhatisupError {}
/** 409: invalid_lifecycle_transition, not_connected, no_qr, not_sandbox, idempotency_conflict, concurrent_modification. */
export class ConflictError extends WhatisupError {}
/** 503 unavailable, or the gateway could not be reached. */
export class UnavailableError extends WhatisupError {}

/** Maps anything thrown by a Connect call to a WhatisupError (other errors pass through unchanged). */
export function toWhatisupError(e: unknown): unknown {
  if (e instanceof WhatisupError) return e;
  if (!(e instanceof ConnectError)) return e;
  const info = errorInfo(e);
  const code = info?.reason || fallbackCode(e.code);
  const details = info?.metadata ?? {};
  const msg = e.rawMessage;
  switch (e.code) {
    case Code.NotFound:
      return new NotFoundError(msg, code, e.code, details, e);
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return new AuthError(msg, code, e.code, details, e);
    case Code.ResourceExhausted: {
      const ra = Number(e.metadata.get("retry-after") ?? details["retry_after"] ?? NaN);
      return new RateLimitedError(msg, code, e.code, details, e, Number.isFinite(ra) ? ra : undefined);
    }
    case Code.InvalidArgument:
      return new InvalidRequestError(msg, code, e.code, details, e);
    case Code.FailedPrecondition:
    case Code.AlreadyExists:
    case Code.Aborted:
      return new ConflictError(msg, code, e.code, details, e);
    case Code.Unavailable:
      return new UnavailableError(msg, code, e.code, details, e);
    default:
      return new WhatisupError(msg, code, e.code, details, e);
  }
}

function fallbackCode(c: Code): string {
  switch (c) {
    case Code.Unavailable:
      return "unavailable";
    case Code.Internal:
      return "internal";
    case Code.ResourceExhausted:
      return "rate_limited";
    case Code.Unauthenticated:
      return "auth_invalid";
    default:
      return "unknown";
  }
}

interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** ErrorInfo from the error's details, decoded by hand: three fields, no need to ship googleapis' protos. */
export function errorInfo(e: ConnectError): ErrorInfo | undefined {
  for (const d of e.details) {
    // Incoming details are {type, value: bytes}; outgoing ones (never on a received error) carry a schema.
    if (!("type" in d) || d.type !== ERROR_INFO || !(d.value instanceof Uint8Array)) continue;
    try {
      return decodeErrorInfo(d.value);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const r = new BinaryReader(bytes);
  const out: ErrorInfo = { reason: "", domain: "", metadata: {} };
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1 && wire === WireType.LengthDelimited) out.reason = r.string();
    else if (field === 2 && wire === WireType.LengthDelimited) out.domain = r.string();
    else if (field === 3 && wire === WireType.LengthDelimited) {
      // map<string, string> entry: key = 1, value = 2.
      const entry = new BinaryReader(r.bytes());
      let k = "";
      let v = "";
      while (entry.pos < entry.len) {
        const [f, w] = entry.tag();
        if (f === 1 && w === WireType.LengthDelimited) k = entry.string();
        else if (f === 2 && w === WireType.LengthDelimited) v = entry.string();
        else entry.skip(w, f);
      }
      out.metadata[k] = v;
    } else r.skip(wire, field);
  }
  return out;
}
