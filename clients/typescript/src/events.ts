// The event stream as an async iterator that resumes by itself: after a dropped stream (network, gateway restart,
// a lagging subscriber) it reconnects with capped exponential backoff and asks for everything after the last
// cursor it handed out, so nothing is skipped and nothing comes twice.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Event, EventService } from "./gen/whatisup/v1/events_pb.js";
import { toWhatisupError } from "./errors.js";

export interface StreamEventsOptions {
  /** Only this channel's events. */
  channelId?: string;
  /** Event names, "message.*" style wildcards allowed; empty: all. */
  events?: string[];
  /** Resume after this cursor (a StreamedEvent.cursor you stored). "0" replays the whole retained log; left out,
   * the stream starts live (and, until a first event gives it a cursor, a reconnect starts live again: pass a
   * cursor when nothing may be missed). */
  since?: string;
  /** Ends the iteration (no error) when aborted. */
  signal?: AbortSignal;
  /** First reconnect delay; doubles per failed attempt up to maxBackoffMs. Defaults 200 and 5000 ms. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Consecutive failed attempts before the iterator gives up and throws; default unlimited. */
  maxRetries?: number;
  /** Called before each reconnect, with the error that ended the previous stream (undefined: it just ended). */
  onReconnect?: (attempt: number, error: unknown) => void;
}

export interface StreamedEvent {
  /** Pass as `since` to resume right after this event. */
  cursor: string;
  event: Event;
}

// Remembered event ids, a guard against a replay overlapping what was already handed out.
const SEEN_MAX = 1024;

export class EventStream implements AsyncIterable<StreamedEvent> {
  /** The cursor of the last event handed out ("" before the first): store it to resume later. */
  cursor: string;
  /** How many times the stream was re-opened. */
  reconnects = 0;

  constructor(
    private readonly client: Client<typeof EventService>,
    private readonly opts: StreamEventsOptions,
  ) {
    this.cursor = opts.since ?? "";
  }

  async *[Symbol.asyncIterator](): AsyncIterator<StreamedEvent> {
    const { signal } = this.opts;
    const initial = this.opts.initialBackoffMs ?? 200;
    const cap = this.opts.maxBackoffMs ?? 5000;
    const maxRetries = this.opts.maxRetries ?? Infinity;
    const seen = new Set<string>();
    let failures = 0;
    for (;;) {
      if (signal?.aborted) return;
      const ctrl = new AbortController();
      const onAbort = () => ctrl.abort();
      signal?.addEventListener("abort", onAbort, { once: true });
      let error: unknown = undefined;
      try {
        const responses = this.client.streamEvents(
          { channelId: this.opts.channelId ?? "", events: this.opts.events ?? [], afterCursor: this.cursor },
          { signal: ctrl.signal },
        );
        for await (const r of responses) {
          failures = 0;
          if (!r.event) continue;
          this.cursor = r.cursor;
          if (seen.has(r.event.eventId)) continue;
          seen.add(r.event.eventId);
          if (seen.size > SEEN_MAX) {
            const oldest = seen.values().next().value;
            if (oldest !== undefined) seen.delete(oldest);
          }
          yield { cursor: r.cursor, event: r.event };
        }
      } catch (e) {
        error = e;
      } finally {
        signal?.removeEventListener("abort", onAbort);
        ctrl.abort();
      }
      if (signal?.aborted) return;
      if (error !== undefined && !resumable(error)) throw toWhatisupError(error);
      failures++;
      if (failures > maxRetries) throw toWhatisupError(error ?? new Error("the event stream keeps ending"));
      this.reconnects++;
      this.opts.onReconnect?.(this.reconnects, error);
      const base = Math.min(cap, initial * 2 ** Math.min(failures - 1, 20));
      await sleep(base * (0.8 + Math.random() * 0.4), signal);
    }
  }
}

/** Errors after which asking again (from the cursor) can succeed. */
function resumable(e: unknown): boolean {
  if (!(e instanceof ConnectError)) return true; // network errors below the RPC layer
  switch (e.code) {
    case Code.InvalidArgument:
    case Code.NotFound:
    case Code.Unauthenticated:
    case Code.PermissionDenied:
    case Code.FailedPrecondition:
    case Code.Unimplemented:
    case Code.OutOfRange:
      return false;
    default:
      // Unavailable, Canceled by the peer, Internal, Unknown, DeadlineExceeded, Aborted, ResourceExhausted and
      // DataLoss (a subscriber that fell behind) all end one stream, not the subscription.
      return true;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
