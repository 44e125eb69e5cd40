// The idiomatic layer over the generated services: one client, resources named like the REST surface, errors as
// WhatisupError, list calls as async iterators over every page, and a resuming event stream.
import { createClient as connectClient, type CallOptions, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ApiKeyService, type ApiKey, type CreateApiKeyResponse } from "./gen/whatisup/v1/api_keys_pb.js";
import {
  ChannelService,
  type Channel,
  type CreateChannelRequestSchema,
  type GetQrResponse,
  type ListChannelsResponse,
  type PairCodeResponse,
} from "./gen/whatisup/v1/channels_pb.js";
import { EventService } from "./gen/whatisup/v1/events_pb.js";
import { MediaService, type UploadMediaResponse } from "./gen/whatisup/v1/media_pb.js";
import {
  MessageService,
  type Message,
  type SendMessageRequestSchema,
  type SendMessageResponse,
} from "./gen/whatisup/v1/messages_pb.js";
import {
  SandboxService,
  type SandboxActionResponse,
  type SandboxInboundRequestSchema,
} from "./gen/whatisup/v1/sandbox_pb.js";
import {
  WebhookService,
  type CreateWebhookEndpointRequestSchema,
  type ListWebhookDeliveriesRequestSchema,
  type WebhookDelivery,
  type WebhookEndpoint,
} from "./gen/whatisup/v1/webhooks_pb.js";
import { toWhatisupError } from "./errors.js";
import { EventStream, type StreamEventsOptions } from "./events.js";

/** "grpc": HTTP/2 (h2c or TLS), Node.js only. "grpc-web": HTTP/1.1 with fetch, browsers and Node.js. */
export type TransportKind = "grpc" | "grpc-web";

export interface ClientOptions {
  /** zpk_live_... or zpk_test_... */
  apiKey: string;
  /** The gateway, e.g. "http://127.0.0.1:8080" (its one port serves gRPC and grpc-web). */
  baseUrl?: string;
  /** Default: "grpc" in Node.js, "grpc-web" elsewhere (browsers cannot speak gRPC). */
  transport?: TransportKind;
  /** Deadline of each unary call; default 30000 ms. Streams have none. */
  timeoutMs?: number;
  /** Extra Connect interceptors (logging, tracing), run after the one that adds the API key. */
  interceptors?: Interceptor[];
}

type Init<S> = S extends import("@bufbuild/protobuf").DescMessage ? MessageInitShape<S> : never;
type CreateChannelInit = Init<typeof CreateChannelRequestSchema>;
type SendMessageInit = Init<typeof SendMessageRequestSchema>;
type InboundInit = Omit<Init<typeof SandboxInboundRequestSchema>, "id" | "$typeName">;
type CreateWebhookInit = Init<typeof CreateWebhookEndpointRequestSchema>;
type DeliveryFilter = Omit<Init<typeof ListWebhookDeliveriesRequestSchema>, "cursor" | "$typeName">;

export function isNode(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof p?.versions?.node === "string";
}

/** A client for one API key. */
export function createClient(opts: ClientOptions): WhatisupClient {
  return new WhatisupClient(opts);
}

export class WhatisupClient {
  readonly transport: TransportKind;
  readonly channels: Channels;
  readonly messages: Messages;
  readonly media: Media;
  readonly events: Events;
  readonly webhooks: Webhooks;
  readonly apiKeys: ApiKeys;
  readonly sandbox: Sandbox;

  constructor(opts: ClientOptions) {
    if (!opts.apiKey) throw new TypeError("apiKey is required");
    const baseUrl = (opts.baseUrl ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
    this.transport = opts.transport ?? (isNode() ? "grpc" : "grpc-web");
    const auth: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${opts.apiKey}`);
      return next(req);
    };
    const interceptors = [auth, ...(opts.interceptors ?? [])];
    const transport = makeTransport(this.transport, baseUrl, interceptors);
    const call = new Caller(opts.timeoutMs ?? 30_000);
    this.channels = new Channels(connectClient(ChannelService, transport), call);
    this.messages = new Messages(connectClient(MessageService, transport), call);
    this.media = new Media(connectClient(MediaService, transport), call);
    this.events = new Events(connectClient(EventService, transport));
    this.webhooks = new Webhooks(connectClient(WebhookService, transport), call);
    this.apiKeys = new ApiKeys(connectClient(ApiKeyService, transport), call);
    this.sandbox = new Sandbox(connectClient(SandboxService, transport), call);
  }
}

function makeTransport(kind: TransportKind, baseUrl: string, interceptors: Interceptor[]): Transport {
  if (kind === "grpc-web") {
    // fetch-based: the same code path in browsers and in Node.js.
    return createGrpcWebTransport({ baseUrl, interceptors });
  }
  if (kind !== "grpc") throw new TypeError(`unknown transport ${String(kind)}`);
  if (!isNode()) throw new TypeError('transport "grpc" needs Node.js; browsers use "grpc-web"');
  // Loaded on first use, so browser bundles never pull in node:http2 (package.json maps it away for them).
  return lazyTransport(async () => {
    const m = await import("@connectrpc/connect-node");
    return m.createGrpcTransport({ baseUrl, interceptors });
  });
}

function lazyTransport(load: () => Promise<Transport>): Transport {
  let pending: Promise<Transport> | undefined;
  const get = () => (pending ??= load());
  type Fn = (...a: unknown[]) => Promise<unknown>;
  return {
    unary: (async (...a: unknown[]) => ((await get()).unary as unknown as Fn)(...a)) as unknown as Transport["unary"],
    stream: (async (...a: unknown[]) => ((await get()).stream as unknown as Fn)(...a)) as unknown as Transport["stream"],
  };
}

/** Runs unary calls with the default deadline and maps their errors. */
class Caller {
  constructor(private readonly timeoutMs: number) {}
  async run<T>(f: (o: CallOptions) => Promise<T>, o?: CallOptions): Promise<T> {
    try {
      return await f({ timeoutMs: this.timeoutMs, ...o });
    } catch (e) {
      throw toWhatisupError(e);
    }
  }
}

export class Channels {
  constructor(private readonly c: Client<typeof ChannelService>, private readonly call: Caller) {}

  create(req: Omit<CreateChannelInit, "$typeName">, o?: CallOptions): Promise<Channel> {
    return this.call.run((x) => this.c.createChannel(req, x), o);
  }
  /** One page (newest first): `{ data, nextCursor }`. */
  listPage(req: { limit?: number; cursor?: string; status?: string } = {}, o?: CallOptions): Promise<ListChannelsResponse> {
    return this.call.run((x) => this.c.listChannels(req, x), o);
  }
  /** Every channel, page after page (`pageSize` per request, 1..100). */
  async *list(req: { status?: string; pageSize?: number } = {}, o?: CallOptions): AsyncGenerator<Channel> {
    let cursor = "";
    do {
      const page = await this.listPage({ limit: req.pageSize ?? 100, cursor, status: req.status ?? "" }, o);
      yield* page.data;
      cursor = page.nextCursor ?? "";
    } while (cursor);
  }
  get(id: string, o?: CallOptions): Promise<Channel> {
    return this.call.run((x) => this.c.getChannel({ id }, x), o);
  }
  /** Soft delete: the connection stops, the row stays for audit. */
  delete(id: string, o?: CallOptions): Promise<Channel> {
    return this.call.run((x) => this.c.deleteChannel({ id }, x), o);
  }
  connect(id: string, o?: CallOptions): Promise<Channel> {
    return this.call.run((x) => this.c.connectChannel({ id }, x), o);
  }
  logout(id: string, o?: CallOptions): Promise<Channel> {
    return this.call.run((x) => this.c.logoutChannel({ id }, x), o);
  }
  /** Waits up to `wait` seconds (default 10, max 30) for a QR code; starts the session from pending. */
  qr(id: string, opts: { wait?: number } = {}, o?: CallOptions): Promise<GetQrResponse> {
    const wait = opts.wait ?? 10;
    // The server may wait `wait` seconds: the deadline must outlast it.
    return this.call.run((x) => this.c.getQr({ id, wait }, x), { timeoutMs: (wait + 10) * 1000, ...o });
  }
  pairCode(id: string, phoneNumber: string, o?: CallOptions): Promise<PairCodeResponse> {
    return this.call.run((x) => this.c.requestPairCode({ id, phoneNumber }, x), o);
  }
}

export class Messages {
  constructor(private readonly c: Client<typeof MessageService>, private readonly call: Caller) {}

  /** `{ channelId, to, text }` sends a text; `type` defaults to "text". Answers once the send is durable. */
  send(req: Omit<SendMessageInit, "$typeName">, o?: CallOptions): Promise<SendMessageResponse> {
    return this.call.run((x) => this.c.sendMessage({ type: "text", ...req }, x), o);
  }
  get(channelId: string, messageId: string, o?: CallOptions): Promise<Message> {
    return this.call.run((x) => this.c.getMessage({ channelId, messageId }, x), o);
  }
}

export class Media {
  constructor(private readonly c: Client<typeof MediaService>, private readonly call: Caller) {}

  /** Upload once, send many (`messages.send({ ..., mediaId })`). */
  upload(
    req: { channelId: string; data: Uint8Array; mimeType: string; filename?: string },
    o?: CallOptions,
  ): Promise<UploadMediaResponse> {
    return this.call.run((x) => this.c.uploadMedia(req, x), o);
  }
}

export class Events {
  constructor(private readonly c: Client<typeof EventService>) {}

  /** An async iterator over events that resumes by itself from the last cursor; see StreamEventsOptions. */
  stream(opts: StreamEventsOptions = {}): EventStream {
    return new EventStream(this.c, opts);
  }
}

export class Webhooks {
  readonly deliveries: Deliveries;

  constructor(private readonly c: Client<typeof WebhookService>, private readonly call: Caller) {
    this.deliveries = new Deliveries(c, call);
  }

  /** The answer carries `signingSecret` (whsec_...): shown only here and by rotateSecret. */
  create(req: Omit<CreateWebhookInit, "$typeName">, o?: CallOptions): Promise<WebhookEndpoint> {
    return this.call.run((x) => this.c.createWebhookEndpoint(req, x), o);
  }
  async list(o?: CallOptions): Promise<WebhookEndpoint[]> {
    return (await this.call.run((x) => this.c.listWebhookEndpoints({}, x), o)).data;
  }
  get(id: string, o?: CallOptions): Promise<WebhookEndpoint> {
    return this.call.run((x) => this.c.getWebhookEndpoint({ id }, x), o);
  }
  /** Fields left out keep their value. */
  update(
    id: string,
    change: {
      url?: string;
      events?: string[];
      channelId?: string;
      enabled?: boolean;
      description?: string;
      retrySchedule?: string[];
    },
    o?: CallOptions,
  ): Promise<WebhookEndpoint> {
    const { events, retrySchedule, ...rest } = change;
    return this.call.run(
      (x) =>
        this.c.updateWebhookEndpoint(
          {
            id,
            ...rest,
            events: events === undefined ? undefined : { values: events },
            retrySchedule: retrySchedule === undefined ? undefined : { values: retrySchedule },
          },
          x,
        ),
      o,
    );
  }
  delete(id: string, o?: CallOptions): Promise<WebhookEndpoint> {
    return this.call.run((x) => this.c.deleteWebhookEndpoint({ id }, x), o);
  }
  /** A new secret (in the answer); the old one keeps signing beside it for 24 h. */
  rotateSecret(id: string, o?: CallOptions): Promise<WebhookEndpoint> {
    return this.call.run((x) => this.c.rotateWebhookSecret({ id }, x), o);
  }
  /** Queues again the failed deliveries created at or after `since`; answers how many. */
  async recover(id: string, since: Date, o?: CallOptions): Promise<bigint> {
    const r = await this.call.run((x) => this.c.recoverWebhookEndpoint({ id, since: timestampFromDate(since) }, x), o);
    return r.requeued;
  }
}

export class Deliveries {
  constructor(private readonly c: Client<typeof WebhookService>, private readonly call: Caller) {}

  /** Every matching delivery, page after page. */
  async *list(filter: DeliveryFilter = {}, o?: CallOptions): AsyncGenerator<WebhookDelivery> {
    let cursor = "";
    do {
      const page = await this.call.run((x) => this.c.listWebhookDeliveries({ ...filter, cursor }, x), o);
      yield* page.data;
      cursor = page.nextCursor ?? "";
    } while (cursor);
  }
  /** With every attempt. */
  get(id: string, o?: CallOptions): Promise<WebhookDelivery> {
    return this.call.run((x) => this.c.getWebhookDelivery({ id }, x), o);
  }
  redeliver(id: string, o?: CallOptions): Promise<WebhookDelivery> {
    return this.call.run((x) => this.c.redeliverWebhook({ id }, x), o);
  }
}

export class ApiKeys {
  constructor(private readonly c: Client<typeof ApiKeyService>, private readonly call: Caller) {}

  /** The answer's `secret` is shown once. The key gets the mode (live/test) of the key that creates it. */
  create(req: { name: string; channelId?: string; expiresAt?: Date }, o?: CallOptions): Promise<CreateApiKeyResponse> {
    const { expiresAt, ...rest } = req;
    return this.call.run(
      (x) => this.c.createApiKey({ ...rest, expiresAt: expiresAt ? timestampFromDate(expiresAt) : undefined }, x),
      o,
    );
  }
  async list(o?: CallOptions): Promise<ApiKey[]> {
    return (await this.call.run((x) => this.c.listApiKeys({}, x), o)).data;
  }
  delete(id: string, o?: CallOptions): Promise<ApiKey> {
    return this.call.run((x) => this.c.deleteApiKey({ id }, x), o);
  }
}

/** The simulated phone of a test-mode channel (409 not_sandbox on a live one). */
export class Sandbox {
  constructor(private readonly c: Client<typeof SandboxService>, private readonly call: Caller) {}

  /** Completes pairing, as the phone scanning the QR code. */
  scan(id: string, opts: { phoneNumber?: string } = {}, o?: CallOptions): Promise<SandboxActionResponse> {
    return this.call.run((x) => this.c.scan({ id, phoneNumber: opts.phoneNumber ?? "" }, x), o);
  }
  /** A network blip of `durationMs` (default 1000), then automatic resume. */
  drop(id: string, opts: { durationMs?: number } = {}, o?: CallOptions): Promise<SandboxActionResponse> {
    return this.call.run((x) => this.c.drop({ id, durationMs: opts.durationMs }, x), o);
  }
  revoke(id: string, o?: CallOptions): Promise<SandboxActionResponse> {
    return this.call.run((x) => this.c.revoke({ id }, x), o);
  }
  ban(id: string, o?: CallOptions): Promise<SandboxActionResponse> {
    return this.call.run((x) => this.c.ban({ id }, x), o);
  }
  /** A message arrives: `{ from, text }`, or media / location / reaction fields. */
  inbound(id: string, msg: InboundInit, o?: CallOptions): Promise<SandboxActionResponse> {
    return this.call.run((x) => this.c.inbound({ ...msg, id }, x), o);
  }
  /** delivered | read | played */
  receipt(id: string, messageId: string, status: string, o?: CallOptions): Promise<SandboxActionResponse> {
    return this.call.run((x) => this.c.receipt({ id, messageId, status }, x), o);
  }
}
