// Shared by the suites: the gateway under test comes from the environment (tests/client_typescript.rs sets it).
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createClient } from "../dist/index.js";

export const BASE_URL = process.env.WHATISUP_URL ?? "http://127.0.0.1:8080";
export const API_KEY = process.env.WHATISUP_API_KEY ?? "";
export const LIVE_KEY = process.env.WHATISUP_LIVE_KEY ?? "";

export function client(opts = {}) {
  if (!API_KEY) throw new Error("set WHATISUP_URL and WHATISUP_API_KEY (a zpk_test_ key)");
  return createClient({ apiKey: API_KEY, baseUrl: BASE_URL, ...opts });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` until it returns a truthy value; errors count as "not yet" until the deadline. */
export async function eventually(f, ms = 15000, what = "condition") {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${ms} ms${last ? `: ${last}` : ""}`);
    await sleep(100);
  }
}

export async function waitStatus(c, id, status, ms = 20000) {
  return eventually(async () => {
    const ch = await c.channels.get(id);
    return ch.status === status ? ch : undefined;
  }, ms, `channel ${id} ${status}`);
}

/** Create, QR, scan: a connected sandbox channel. */
export async function connectedChannel(c, name, phoneNumber) {
  const ch = await c.channels.create({ name });
  await c.channels.qr(ch.id, { wait: 10 });
  await c.sandbox.scan(ch.id, phoneNumber ? { phoneNumber } : {});
  return waitStatus(c, ch.id, "connected");
}

/** Pumps an event stream into `items` in the background; waitFor finds the first match. */
export function collect(stream) {
  const state = { items: [], error: undefined, ended: false };
  state.done = (async () => {
    try {
      for await (const x of stream) state.items.push(x);
    } catch (e) {
      state.error = e;
    } finally {
      state.ended = true;
    }
  })();
  state.waitFor = async (pred, ms = 20000) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = state.items.find(pred);
      if (hit) return hit;
      if (state.error) throw state.error;
      if (Date.now() > deadline) {
        throw new Error(`no matching event within ${ms} ms; got ${state.items.map((i) => i.event.event).join(", ")}`);
      }
      await sleep(50);
    }
  };
  return state;
}

/** Asks the harness (tests/client_typescript.rs) to restart the gateway on the same port and database. */
export async function restartGateway() {
  const dir = process.env.WHATISUP_CONTROL_DIR;
  if (!dir) throw new Error("WHATISUP_CONTROL_DIR is not set: only the cargo harness can restart the gateway");
  const done = join(dir, "restart-done");
  rmSync(done, { force: true });
  writeFileSync(join(dir, "restart-request"), "1");
  await eventually(() => existsSync(done), 60000, "gateway restart");
}
