// The error mapping on synthetic Connect errors (rate limiting is hard to provoke against a real gateway).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { toWhatisupError } from "../dist/errors.js";
import { RateLimitedError, UnavailableError, WhatisupError } from "../dist/index.js";

function errorInfo(reason, metadata = {}) {
  const w = new BinaryWriter().tag(1, 2).string(reason).tag(2, 2).string("whatisup");
  for (const [k, v] of Object.entries(metadata)) {
    w.tag(3, 2).fork().tag(1, 2).string(k).tag(2, 2).string(v).join();
  }
  return { type: "google.rpc.ErrorInfo", value: w.finish() };
}

test("rate_limited maps to RateLimitedError with retry-after", () => {
  const e = new ConnectError("slow down", Code.ResourceExhausted, { "retry-after": "3" }, [errorInfo("rate_limited")]);
  const m = toWhatisupError(e);
  assert.ok(m instanceof RateLimitedError);
  assert.equal(m.code, "rate_limited");
  assert.equal(m.retryAfter, 3);
  assert.equal(m.message, "slow down");
  assert.equal(m.cause, e);
});

test("ErrorInfo metadata becomes details; missing ErrorInfo falls back to the status", () => {
  const m = toWhatisupError(new ConnectError("bad", Code.InvalidArgument, undefined, [errorInfo("invalid_request", { field: "to" })]));
  assert.equal(m.code, "invalid_request");
  assert.deepEqual(m.details, { field: "to" });
  const u = toWhatisupError(new ConnectError("down", Code.Unavailable));
  assert.ok(u instanceof UnavailableError && u.code === "unavailable");
  const x = toWhatisupError(new ConnectError("?", Code.DataLoss));
  assert.ok(x instanceof WhatisupError && x.code === "unknown");
  const plain = new TypeError("not from the gateway");
  assert.equal(toWhatisupError(plain), plain);
});
