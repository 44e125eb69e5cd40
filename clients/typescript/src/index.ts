// @whatisup/client: the whatisup gateway from TypeScript. Node.js speaks gRPC, browsers grpc-web.
export {
  createClient,
  WhatisupClient,
  Channels,
  Messages,
  Media,
  Events,
  Webhooks,
  Deliveries,
  ApiKeys,
  Sandbox,
  type ClientOptions,
  type TransportKind,
} from "./client.js";
export { EventStream, type StreamEventsOptions, type StreamedEvent } from "./events.js";
export {
  WhatisupError,
  NotFoundError,
  AuthError,
  RateLimitedError,
  InvalidRequestError,
  ConflictError,
  UnavailableError,
} from "./errors.js";
export { verifyWebhook, WebhookVerificationError, type VerifyOptions, type WebhookEvent, type WebhookHeaders } from "./webhook.js";
export { timestampDate } from "@bufbuild/protobuf/wkt";
export type { Channel, GetQrResponse, PairCodeResponse } from "./gen/whatisup/v1/channels_pb.js";
export type { Event } from "./gen/whatisup/v1/events_pb.js";
export type { Message, SendMessageResponse } from "./gen/whatisup/v1/messages_pb.js";
export type { UploadMediaResponse } from "./gen/whatisup/v1/media_pb.js";
export type { WebhookEndpoint, WebhookDelivery, WebhookAttempt } from "./gen/whatisup/v1/webhooks_pb.js";
export type { ApiKey, CreateApiKeyResponse } from "./gen/whatisup/v1/api_keys_pb.js";
export type { SandboxActionResponse } from "./gen/whatisup/v1/sandbox_pb.js";
