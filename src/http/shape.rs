//! The REST JSON shape of each API result (pbjson, plus `null` for unset optional fields). The REST handlers
//! answer with these, and the CLI's `--json` prints them, so both show the same documents.

use super::{
    CHANNEL_NULLABLE, KEY_NULLABLE, MESSAGE_NULLABLE, to_value, webhooks as wh, with_nulls,
};
use crate::pb;
use serde_json::{Value, json};

pub fn channel(c: &pb::Channel) -> Value {
    with_nulls(to_value(c), CHANNEL_NULLABLE)
}

pub fn channels(list: &pb::ListChannelsResponse) -> Value {
    json!({
        "data": list.data.iter().map(channel).collect::<Vec<_>>(),
        "next_cursor": list.next_cursor,
    })
}

pub fn api_key(k: &pb::ApiKey) -> Value {
    with_nulls(to_value(k), KEY_NULLABLE)
}

pub fn api_keys(list: &pb::ListApiKeysResponse) -> Value {
    json!({"data": list.data.iter().map(api_key).collect::<Vec<_>>()})
}

pub fn created_api_key(r: &pb::CreateApiKeyResponse) -> Value {
    json!({"api_key": r.api_key.as_ref().map(api_key), "secret": r.secret})
}

pub fn send_response(r: &pb::SendMessageResponse) -> Value {
    with_nulls(to_value(r), &["client_ref"])
}

pub fn uploaded_media(r: &pb::UploadMediaResponse) -> Value {
    with_nulls(to_value(r), &["filename"])
}

pub fn message(m: &pb::Message) -> Value {
    let mut v = with_nulls(to_value(m), MESSAGE_NULLABLE);
    // History entries show `error` only where there is one.
    if let Some(h) = v.get_mut("history").and_then(|h| h.as_array_mut()) {
        for e in h {
            if let Value::Object(o) = e
                && o.get("error").is_some_and(|x| x.is_null())
            {
                o.remove("error");
            }
        }
    }
    v
}

pub fn qr(r: &pb::GetQrResponse) -> Value {
    to_value(r)
}

pub fn pair_code(r: &pb::PairCodeResponse) -> Value {
    to_value(r)
}

/// `{"event": <envelope>, "cursor"}`: the envelope as SSE and webhooks show it (proto3 JSON would print the
/// uint64 `sequence` as a string; the contract's envelope has a number).
pub fn event(r: &pb::StreamEventsResponse) -> Value {
    let mut v = to_value(r);
    if let Some(seq) = v.pointer_mut("/event/sequence")
        && let Some(n) = seq.as_str().and_then(|s| s.parse::<u64>().ok())
    {
        *seq = Value::from(n);
    }
    v
}

pub fn webhook_endpoint(e: &pb::WebhookEndpoint) -> Value {
    wh::endpoint_json(e)
}

pub fn webhook_endpoints(list: &pb::ListWebhookEndpointsResponse) -> Value {
    json!({
        "data": list.data.iter().map(wh::endpoint_json).collect::<Vec<_>>(),
        "next_cursor": null,
    })
}

/// `with_attempts`: GetWebhookDelivery shows every attempt; lists and redeliver do not.
pub fn webhook_delivery(d: &pb::WebhookDelivery, with_attempts: bool) -> Value {
    wh::delivery_json(d, with_attempts)
}

pub fn webhook_deliveries(list: &pb::ListWebhookDeliveriesResponse) -> Value {
    json!({
        "data": list.data.iter().map(|d| wh::delivery_json(d, false)).collect::<Vec<_>>(),
        "next_cursor": list.next_cursor,
    })
}

pub fn recovered(r: &pb::RecoverWebhookEndpointResponse) -> Value {
    json!({"requeued": r.requeued})
}
