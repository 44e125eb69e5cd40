//! `GET /openapi.json` and `whatisup openapi`: the OpenAPI 3.1 document of the REST surface, generated, never
//! written by hand.
//!
//! * Schemas come from the proto descriptor set (`pb::FILE_DESCRIPTOR_SET`), mapped to the proto3 JSON that pbjson
//!   emits here: proto field names (snake_case), every non-optional field present, 64-bit integers as strings,
//!   enums as names, Timestamp as an RFC 3339 string, Struct/Value as any JSON, `optional` and message fields
//!   nullable (absent or null), request bodies closed (pbjson rejects unknown fields).
//! * Operations come from `ROUTES`, one row per method and path. A row names the gRPC method the route calls; its
//!   request and response messages, path and query parameters follow from the descriptor. `router()` in `mod.rs`
//!   registers the same paths, and tests hold the two against each other in both directions.

use crate::error::Code;
use crate::pb;
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Get, Method::Post, Method::Patch, Method::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Patch => "patch",
            Method::Delete => "delete",
        }
    }

    fn has_body(self) -> bool {
        matches!(self, Method::Post | Method::Patch)
    }
}

/// The success answer of an operation.
#[derive(Clone, Copy)]
pub enum Reply {
    /// The gRPC method's response message as proto3 JSON.
    Proto,
    /// Server-Sent Events whose `data:` is the event envelope (`Event`).
    EventStream,
    /// Raw bytes with their own media type.
    Binary,
    /// Plain text (health, Prometheus metrics).
    Text,
    /// JSON that no proto message describes (operational and test-mode read-outs); the schema is given.
    Json(fn() -> Value),
}

/// The request body of a POST/PATCH.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// The gRPC request message without its path fields, as JSON; an empty body is the empty message.
    Proto,
    /// The raw bytes, typed by their own Content-Type (media upload).
    Raw,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Bearer,
    /// Bearer, or `?token=` (browsers' EventSource cannot set headers).
    BearerOrToken,
    None,
}

/// A query parameter a handler reads where it does not follow the request message.
pub struct QueryParam {
    pub name: &'static str,
    pub description: &'static str,
}

/// One REST operation.
pub struct Op {
    pub method: Method,
    /// The documented path.
    pub path: &'static str,
    /// The path the router registers (differs only where one route serves several documented paths).
    pub route: &'static str,
    /// The gRPC method this route calls (its name is the operationId), or `None` for a REST-only route.
    pub grpc: Option<&'static str>,
    pub operation_id: &'static str,
    /// REST-only routes: their tag and summary (gRPC routes take both from the service and the method comment).
    pub tag: &'static str,
    pub summary: &'static str,
    pub status: u16,
    pub body: Body,
    pub reply: Reply,
    pub auth: Auth,
    /// Query parameters read by hand; `None`: the request message's non-path fields (GET and DELETE).
    pub query: Option<&'static [QueryParam]>,
    /// Answers 409 although it is a GET (a state precondition).
    pub conflict: bool,
}

/// A route that calls the gRPC method `grpc`.
const fn rpc(method: Method, path: &'static str, grpc: &'static str) -> Op {
    Op {
        method,
        path,
        route: path,
        grpc: Some(grpc),
        operation_id: grpc,
        tag: "",
        summary: "",
        status: 200,
        body: Body::Proto,
        reply: Reply::Proto,
        auth: Auth::Bearer,
        query: None,
        conflict: false,
    }
}

/// A route with no gRPC counterpart.
const fn rest(
    method: Method,
    path: &'static str,
    operation_id: &'static str,
    tag: &'static str,
    summary: &'static str,
    reply: Reply,
) -> Op {
    Op {
        grpc: None,
        operation_id,
        tag,
        summary,
        reply,
        query: Some(&[]),
        ..rpc(method, path, "")
    }
}

impl Op {
    const fn status(mut self, status: u16) -> Op {
        self.status = status;
        self
    }
    const fn route(mut self, route: &'static str) -> Op {
        self.route = route;
        self
    }
    const fn body(mut self, body: Body) -> Op {
        self.body = body;
        self
    }
    const fn reply(mut self, reply: Reply) -> Op {
        self.reply = reply;
        self
    }
    const fn auth(mut self, auth: Auth) -> Op {
        self.auth = auth;
        self
    }
    const fn query(mut self, query: &'static [QueryParam]) -> Op {
        self.query = Some(query);
        self
    }
    const fn conflict(mut self) -> Op {
        self.conflict = true;
        self
    }
}

use Method::{Delete as DELETE, Get as GET, Patch as PATCH, Post as POST};

const SANDBOX_ROUTE: &str = "/v1/channels/{id}/sandbox/{action}";

/// Every REST operation. Adding a route: one row here, one `.route(...)` in `mod.rs`, then
/// `cargo run -- openapi > openapi.json`.
#[rustfmt::skip]
pub const ROUTES: &[Op] = &[
    rpc(POST, "/v1/channels", "CreateChannel").status(201),
    rpc(GET, "/v1/channels", "ListChannels"),
    rpc(GET, "/v1/channels/{id}", "GetChannel"),
    rpc(DELETE, "/v1/channels/{id}", "DeleteChannel"),
    rpc(POST, "/v1/channels/{id}/connect", "ConnectChannel").status(202),
    rpc(POST, "/v1/channels/{id}/logout", "LogoutChannel").status(202),
    rpc(GET, "/v1/channels/{id}/qr", "GetQr").conflict(),
    rpc(POST, "/v1/channels/{id}/pair-code", "RequestPairCode"),
    rpc(POST, "/v1/channels/{id}/sandbox/scan", "Scan").route(SANDBOX_ROUTE),
    rpc(POST, "/v1/channels/{id}/sandbox/drop", "Drop").route(SANDBOX_ROUTE),
    rpc(POST, "/v1/channels/{id}/sandbox/revoke", "Revoke").route(SANDBOX_ROUTE),
    rpc(POST, "/v1/channels/{id}/sandbox/ban", "Ban").route(SANDBOX_ROUTE),
    rpc(POST, "/v1/channels/{id}/sandbox/inbound", "Inbound").route(SANDBOX_ROUTE),
    rpc(POST, "/v1/channels/{id}/sandbox/receipt", "Receipt").route(SANDBOX_ROUTE),
    rest(GET, "/v1/channels/{id}/sandbox/outbound", "SandboxOutbound", "SandboxService", OUTBOUND, Reply::Json(outbound_schema)).conflict(),
    rpc(POST, "/v1/channels/{id}/messages", "SendMessage").status(202),
    rpc(GET, "/v1/channels/{id}/messages/{message_id}", "GetMessage"),
    rpc(POST, "/v1/channels/{id}/media", "UploadMedia").status(201).body(Body::Raw).query(UPLOAD_QUERY),
    rest(GET, "/v1/media/{token}", "GetMedia", "MediaService", GET_MEDIA, Reply::Binary).auth(Auth::None),
    rpc(GET, "/v1/events", "StreamEvents").reply(Reply::EventStream).auth(Auth::BearerOrToken).query(EVENTS_QUERY),
    rpc(POST, "/v1/api-keys", "CreateApiKey").status(201),
    rpc(GET, "/v1/api-keys", "ListApiKeys"),
    rpc(DELETE, "/v1/api-keys/{id}", "DeleteApiKey"),
    rpc(POST, "/v1/webhook-endpoints", "CreateWebhookEndpoint").status(201),
    rpc(GET, "/v1/webhook-endpoints", "ListWebhookEndpoints"),
    rpc(GET, "/v1/webhook-endpoints/{id}", "GetWebhookEndpoint"),
    rpc(PATCH, "/v1/webhook-endpoints/{id}", "UpdateWebhookEndpoint"),
    rpc(DELETE, "/v1/webhook-endpoints/{id}", "DeleteWebhookEndpoint"),
    rpc(POST, "/v1/webhook-endpoints/{id}/rotate-secret", "RotateWebhookSecret"),
    rpc(POST, "/v1/webhook-endpoints/{id}/recover", "RecoverWebhookEndpoint").status(202),
    rpc(GET, "/v1/webhook-deliveries", "ListWebhookDeliveries"),
    rpc(GET, "/v1/webhook-deliveries/{id}", "GetWebhookDelivery"),
    rpc(POST, "/v1/webhook-deliveries/{id}/redeliver", "RedeliverWebhook").status(202),
    rpc(GET, "/v1/audit-events", "ListAuditEvents"),
    rpc(GET, "/v1/limits", "GetLimits"),
    rest(GET, "/openapi.json", "GetOpenApi", OPS, "This document (OpenAPI 3.1).", Reply::Json(any_object)).auth(Auth::None),
    rest(GET, "/healthz", "Healthz", OPS, "Liveness: the process answers.", Reply::Text).auth(Auth::None),
    rest(GET, "/readyz", "Readyz", OPS, "Readiness: the database answers (503 when it does not).", Reply::Json(readyz_schema)).auth(Auth::None),
    rest(GET, "/metrics", "Metrics", OPS, "Prometheus metrics (text exposition format).", Reply::Text).auth(Auth::None),
];

const OPS: &str = "operations";

const OUTBOUND: &str = "Test mode only: what the simulated WhatsApp server accepted from this channel (each \
                        WhatsApp id once, with the number of repeats it dropped). 409 not_sandbox on a live channel.";

const GET_MEDIA: &str = "The bytes of inbound media, with their own Content-Type. No API key: the signed token \
                         (from a message.received event's media.url) is the credential; an unknown, tampered or \
                         expired token answers 404 not_found.";

const UPLOAD_QUERY: &[QueryParam] = &[QueryParam {
    name: "filename",
    description: "The name document sends show when they give none.",
}];

const EVENTS_QUERY: &[QueryParam] = &[
    QueryParam {
        name: "channel_id",
        description: "Only this channel's events.",
    },
    QueryParam {
        name: "events",
        description: "Comma-separated event names; `message.*` style wildcards allowed. Empty: all.",
    },
    QueryParam {
        name: "last_event_id",
        description: "Resume after this cursor (an `id:` of an earlier frame; `0` replays the whole retained \
                      log). The Last-Event-ID header does the same.",
    },
    QueryParam {
        name: "token",
        description: "The API key, for clients that cannot set the Authorization header (EventSource).",
    },
];

fn any_object() -> Value {
    json!({"type": "object"})
}

fn readyz_schema() -> Value {
    json!({
        "type": "object",
        "required": ["status", "node_id"],
        "properties": {"status": {"const": "ready"}, "node_id": {"type": "string"}},
    })
}

fn outbound_schema() -> Value {
    let nullable_string = json!({"type": ["string", "null"]});
    json!({
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": {
            "type": "object",
            "required": ["whatsapp_id", "to", "type", "duplicates", "accepted_at"],
            "properties": {
                "whatsapp_id": {"type": "string"},
                "to": {"type": "string"},
                "type": {"type": "string"},
                "text": nullable_string,
                "caption": {},
                "media": {},
                "duplicates": {"type": "integer"},
                "accepted_at": {"type": "string", "format": "date-time"},
            },
        }}},
    })
}

/// Fields the REST face leaves out of some answers although pbjson always emits them.
const SOMETIMES_OMITTED: &[(&str, &str, &str)] = &[(
    "WebhookDelivery",
    "attempts",
    "Only in the answer of GET /v1/webhook-deliveries/{id}.",
)];

/// Error answers: HTTP status, response name, description.
const ERROR_RESPONSES: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "The request is invalid; `details.field` names the field.",
    ),
    (
        401,
        "Unauthorized",
        "The API key is missing, malformed, unknown or expired.",
    ),
    (
        403,
        "Forbidden",
        "The key may not do this (a channel-bound key outside its channel or managing keys).",
    ),
    (
        404,
        "NotFound",
        "No such resource (another customer's resources answer 404 too).",
    ),
    (
        409,
        "Conflict",
        "The resource's state does not allow this, or the Idempotency-Key was used for another request.",
    ),
    (
        413,
        "PayloadTooLarge",
        "The body is larger than the server accepts.",
    ),
    (
        429,
        "TooManyRequests",
        "The key's rate limit is spent; retry after `Retry-After` seconds.",
    ),
    (
        500,
        "InternalError",
        "The server failed; quote `request_id`.",
    ),
    (
        503,
        "Unavailable",
        "The server cannot answer now (e.g. the database); retry later.",
    ),
];

/// The document, generated once.
pub fn document() -> Result<&'static str, String> {
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    DOC.get_or_init(|| {
        let v = generate(pb::FILE_DESCRIPTOR_SET)?;
        let mut s = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        s.push('\n');
        Ok(s)
    })
    .as_ref()
    .map(String::as_str)
    .map_err(Clone::clone)
}

pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    match document() {
        Ok(doc) => ([("content-type", "application/json")], doc).into_response(),
        Err(e) => crate::error::ApiError::internal(format!("openapi: {e}")).into_response(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// What the server emits: always-present fields required, objects open.
    Response,
    /// What the server accepts: nothing required, objects closed.
    Request,
}

struct MessageInfo<'a> {
    desc: &'a DescriptorProto,
    /// Source path of the message in its file, for comments.
    path: Vec<i32>,
    file: usize,
}

struct MethodInfo {
    service: String,
    input: String,
    output: String,
    comment: Option<String>,
}

struct Gen<'a> {
    messages: HashMap<String, MessageInfo<'a>>,
    enums: HashMap<String, Vec<String>>,
    methods: HashMap<String, Vec<MethodInfo>>,
    /// Per file: source path → leading comment.
    comments: Vec<HashMap<Vec<i32>, String>>,
    schemas: BTreeMap<String, Value>,
    /// (mode, message) → component name already generated.
    named: HashMap<(bool, String), String>,
}

fn clean_comment(c: &str) -> Option<String> {
    let lines: Vec<&str> = c.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    (!lines.is_empty()).then(|| lines.join(" "))
}

impl<'a> Gen<'a> {
    fn new(set: &'a FileDescriptorSet) -> Gen<'a> {
        let mut g = Gen {
            messages: HashMap::new(),
            enums: HashMap::new(),
            methods: HashMap::new(),
            comments: Vec::new(),
            schemas: BTreeMap::new(),
            named: HashMap::new(),
        };
        for (fi, file) in set.file.iter().enumerate() {
            let mut comments = HashMap::new();
            if let Some(info) = &file.source_code_info {
                for loc in &info.location {
                    if let Some(c) = loc.leading_comments.as_deref().and_then(clean_comment) {
                        comments.insert(loc.path.clone(), c);
                    }
                }
            }
            g.comments.push(comments);
            let prefix = match file.package() {
                "" => String::new(),
                p => format!(".{p}"),
            };
            for (i, m) in file.message_type.iter().enumerate() {
                g.add_message(&prefix, m, vec![4, i as i32], fi);
            }
            for e in &file.enum_type {
                g.add_enum(&prefix, e);
            }
            for (si, s) in file.service.iter().enumerate() {
                for (mi, m) in s.method.iter().enumerate() {
                    let comment = g.comments[fi]
                        .get(&vec![6, si as i32, 2, mi as i32])
                        .cloned();
                    g.methods
                        .entry(m.name().to_string())
                        .or_default()
                        .push(MethodInfo {
                            service: s.name().to_string(),
                            input: m.input_type().to_string(),
                            output: m.output_type().to_string(),
                            comment,
                        });
                }
            }
        }
        g
    }

    fn add_message(&mut self, prefix: &str, m: &'a DescriptorProto, path: Vec<i32>, file: usize) {
        let name = format!("{prefix}.{}", m.name());
        for (i, nested) in m.nested_type.iter().enumerate() {
            let mut p = path.clone();
            p.extend([3, i as i32]);
            self.add_message(&name, nested, p, file);
        }
        for e in &m.enum_type {
            self.add_enum(&name, e);
        }
        self.messages.insert(
            name,
            MessageInfo {
                desc: m,
                path,
                file,
            },
        );
    }

    fn add_enum(&mut self, prefix: &str, e: &prost_types::EnumDescriptorProto) {
        let values = e.value.iter().map(|v| v.name().to_string()).collect();
        self.enums.insert(format!("{prefix}.{}", e.name()), values);
    }

    fn method(&self, name: &str) -> Result<&MethodInfo, String> {
        match self.methods.get(name).map(Vec::as_slice) {
            Some([m]) => Ok(m),
            Some(_) => Err(format!("the gRPC method name {name} is ambiguous")),
            None => Err(format!("no gRPC method {name} in proto/")),
        }
    }

    fn message(&self, full: &str) -> Result<&MessageInfo<'a>, String> {
        self.messages
            .get(full)
            .ok_or_else(|| format!("no message {full} in the descriptor set"))
    }

    fn comment(&self, file: usize, path: &[i32]) -> Option<String> {
        self.comments.get(file).and_then(|c| c.get(path)).cloned()
    }

    /// The schema of a well-known type, as pbjson-types writes and reads it.
    fn well_known(full: &str) -> Option<Value> {
        Some(match full.strip_prefix(".google.protobuf.")? {
            "Timestamp" => json!({"type": "string", "format": "date-time"}),
            "Duration" => json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"}),
            "Struct" | "Empty" => json!({"type": "object"}),
            "Any" => json!({"type": "object", "required": ["@type"]}),
            "Value" => json!({}),
            "ListValue" => json!({"type": "array"}),
            "FieldMask" => json!({"type": "string"}),
            "DoubleValue" | "FloatValue" => json!({"type": "number"}),
            "Int32Value" => json!({"type": "integer", "format": "int32"}),
            "UInt32Value" => json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
            "Int64Value" => json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}),
            "UInt64Value" => json!({"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}),
            "BoolValue" => json!({"type": "boolean"}),
            "StringValue" | "FieldMaskValue" => json!({"type": "string"}),
            "BytesValue" => json!({"type": "string", "contentEncoding": "base64"}),
            _ => return None,
        })
    }

    /// A reference to the component schema of a message (generated on first use).
    fn message_ref(&mut self, full: &str, mode: Mode, omit: &[&str]) -> Result<Value, String> {
        if let Some(wkt) = Self::well_known(full) {
            return Ok(wkt);
        }
        let name = self.component(full, mode, omit)?;
        Ok(json!({"$ref": format!("#/components/schemas/{name}")}))
    }

    fn component(&mut self, full: &str, mode: Mode, omit: &[&str]) -> Result<String, String> {
        let key = (mode == Mode::Request, full.to_string());
        if omit.is_empty()
            && let Some(n) = self.named.get(&key)
        {
            return Ok(n.clone());
        }
        let short = full.rsplit('.').next().unwrap_or(full).to_string();
        // Reserve the name first: messages may refer to themselves.
        let mut name = short.clone();
        if self.schemas.contains_key(&name) {
            name = format!("{short}Input");
        }
        if self.schemas.contains_key(&name) {
            return Err(format!("two schemas named {name}"));
        }
        self.schemas.insert(name.clone(), Value::Null);
        if omit.is_empty() {
            self.named.insert(key, name.clone());
        }
        let schema = self.object(full, mode, omit)?;
        self.schemas.insert(name.clone(), schema);
        Ok(name)
    }

    fn object(&mut self, full: &str, mode: Mode, omit: &[&str]) -> Result<Value, String> {
        let (desc, path, file) = {
            let m = self.message(full)?;
            (m.desc, m.path.clone(), m.file)
        };
        let short = desc.name();
        let mut props = Map::new();
        let mut required = Vec::new();
        for (i, f) in desc.field.iter().enumerate() {
            if omit.contains(&f.name()) {
                continue;
            }
            let mut fpath = path.clone();
            fpath.extend([2, i as i32]);
            let mut s = self.field(f, mode)?;
            let mut description = self.comment(file, &fpath);
            let omitted = SOMETIMES_OMITTED
                .iter()
                .find(|(m, field, _)| *m == short && *field == f.name());
            if let Some((_, _, why)) = omitted {
                description = Some(match description {
                    Some(d) => format!("{d} {why}"),
                    None => why.to_string(),
                });
            }
            if let (Some(d), Value::Object(o)) = (description, &mut s) {
                o.insert("description".into(), d.into());
            }
            let real_oneof = f.oneof_index.is_some() && !f.proto3_optional();
            if mode == Mode::Response && always_emitted(f) && !real_oneof && omitted.is_none() {
                required.push(f.name().to_string());
            }
            props.insert(f.name().to_string(), s);
        }
        let mut o = Map::new();
        o.insert("type".into(), "object".into());
        if let Some(d) = self.comment(file, &path) {
            o.insert("description".into(), d.into());
        }
        o.insert("properties".into(), Value::Object(props));
        if !required.is_empty() {
            o.insert("required".into(), required.into());
        }
        if mode == Mode::Request {
            o.insert("additionalProperties".into(), false.into());
        }
        Ok(Value::Object(o))
    }

    /// A field's schema, nullable where pbjson may leave it out or read null.
    fn field(&mut self, f: &FieldDescriptorProto, mode: Mode) -> Result<Value, String> {
        let repeated = f.label() == Label::Repeated;
        if repeated
            && f.r#type() == Type::Message
            && let Some(entry) = self.map_entry(f.type_name())?
        {
            let value = self.field(&entry, mode)?;
            return Ok(json!({"type": "object", "additionalProperties": value}));
        }
        // REST takes the proto's present-or-absent list wrapper as a plain list (PATCH webhook endpoints).
        if mode == Mode::Request && f.type_name() == ".whatisup.v1.StringList" {
            return Ok(json!({"type": ["array", "null"], "items": {"type": "string"}}));
        }
        let base = match f.r#type() {
            Type::Double | Type::Float => json!({"type": "number"}),
            Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Type::Uint32 | Type::Fixed32 => {
                json!({"type": "integer", "minimum": 0, "maximum": u32::MAX})
            }
            Type::Int64 | Type::Sint64 | Type::Sfixed64 => {
                json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"})
            }
            Type::Uint64 | Type::Fixed64 => {
                json!({"type": "string", "format": "uint64", "pattern": "^[0-9]+$"})
            }
            Type::Bool => json!({"type": "boolean"}),
            Type::String => json!({"type": "string"}),
            Type::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Type::Enum => {
                let values = self
                    .enums
                    .get(f.type_name())
                    .ok_or_else(|| format!("no enum {}", f.type_name()))?;
                json!({"type": "string", "enum": values})
            }
            Type::Message | Type::Group => self.message_ref(f.type_name(), mode, &[])?,
        };
        if repeated {
            return Ok(json!({"type": "array", "items": base}));
        }
        let nullable = f.proto3_optional() || f.r#type() == Type::Message;
        Ok(if nullable { or_null(base) } else { base })
    }

    fn map_entry(&self, full: &str) -> Result<Option<FieldDescriptorProto>, String> {
        let m = self.message(full)?;
        if !m.desc.options.as_ref().is_some_and(|o| o.map_entry()) {
            return Ok(None);
        }
        Ok(m.desc.field.iter().find(|f| f.number() == 2).cloned())
    }
}

/// pbjson (emit_fields) always writes non-optional scalars, enums, lists and maps.
fn always_emitted(f: &FieldDescriptorProto) -> bool {
    f.label() == Label::Repeated || (!f.proto3_optional() && f.r#type() != Type::Message)
}

fn or_null(mut s: Value) -> Value {
    if let Some(o) = s.as_object_mut() {
        if o.is_empty() {
            return s;
        }
        if let Some(Value::String(t)) = o.get("type").cloned() {
            o.insert("type".into(), json!([t, "null"]));
            if let Some(Value::Array(e)) = o.get_mut("enum") {
                e.push(Value::Null);
            }
            return s;
        }
    }
    json!({"anyOf": [s, {"type": "null"}]})
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// The request field a path parameter fills: the field of the same name, else (for `{id}`) the first field
/// when it names an id (`channel_id` of SendMessageRequest).
fn bound_field<'f>(msg: &'f DescriptorProto, param: &str) -> Option<&'f FieldDescriptorProto> {
    msg.field.iter().find(|f| f.name() == param).or_else(|| {
        msg.field
            .iter()
            .find(|f| f.number() == 1 && param == "id" && f.name().ends_with("_id"))
    })
}

fn header(description: &str, schema: Value) -> Value {
    json!({"description": description, "schema": schema})
}

fn response_headers(extra: &[(&str, &str)]) -> Value {
    let mut h = Map::new();
    for name in [
        "X-Request-Id",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ]
    .iter()
    .chain(extra.iter().map(|(n, _)| n))
    {
        h.insert(
            name.to_string(),
            json!({"$ref": format!("#/components/headers/{name}")}),
        );
    }
    Value::Object(h)
}

fn error_components() -> (Value, Map<String, Value>) {
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    let envelope = json!({
        "type": "object",
        "description": "Every error answer (contract §3).",
        "required": ["error", "request_id"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"$ref": "#/components/schemas/ErrorCode"},
                    "message": {"type": "string"},
                    "details": {"type": "object", "description": "e.g. `field` naming the offending field."},
                },
            },
            "request_id": {"type": "string", "description": "Also in the X-Request-Id header."},
        },
    });
    let mut responses = Map::new();
    for (status, name, description) in ERROR_RESPONSES {
        let these: Vec<&str> = Code::ALL
            .iter()
            .filter(|c| c.http().as_u16() == *status)
            .map(|c| c.as_str())
            .collect();
        let extra: &[(&str, &str)] = if *status == 429 {
            &[("Retry-After", "")]
        } else {
            &[]
        };
        responses.insert(
            name.to_string(),
            json!({
                "description": format!("{description} Codes: {}.", these.join(", ")),
                "headers": response_headers(extra),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }),
        );
    }
    (
        json!({"Error": envelope, "ErrorCode": {"type": "string", "enum": codes}}),
        responses,
    )
}

/// The whole document from a descriptor set.
pub fn generate(descriptors: &[u8]) -> Result<Value, String> {
    let set = FileDescriptorSet::decode(descriptors).map_err(|e| e.to_string())?;
    let mut g = Gen::new(&set);
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let mut tags = BTreeSet::new();
    for op in ROUTES {
        if !ids.insert(op.operation_id) {
            return Err(format!("operationId {} twice", op.operation_id));
        }
        let item = paths.entry(op.path).or_default();
        if item.contains_key(op.method.as_str()) {
            return Err(format!("{} {} twice", op.method.as_str(), op.path));
        }
        let operation = operation(&mut g, op)?;
        if let Some(t) = operation["tags"][0].as_str() {
            tags.insert(t.to_string());
        }
        item.insert(op.method.as_str().to_string(), operation);
    }
    // The SSE frames carry Event: keep it among the schemas.
    g.message_ref(".whatisup.v1.Event", Mode::Response, &[])?;
    let (error_schemas, error_responses) = error_components();
    let mut schemas: Map<String, Value> = g.schemas.into_iter().collect();
    if let Value::Object(e) = error_schemas {
        schemas.extend(e);
    }
    let headers = json!({
        "X-Request-Id": header("The request's id (also in error bodies).", json!({"type": "string"})),
        "X-RateLimit-Limit": header("The key's bucket size.", json!({"type": "integer"})),
        "X-RateLimit-Remaining": header("Requests left in the bucket.", json!({"type": "integer"})),
        "X-RateLimit-Reset": header("Unix time (seconds) when the bucket is full again.", json!({"type": "integer"})),
        "Retry-After": header("Seconds to wait before retrying.", json!({"type": "integer"})),
        "Idempotent-Replayed": header("`true` when this is the stored answer of an earlier request with the same Idempotency-Key.", json!({"type": "string"})),
    });
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "whatisup REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST/JSON face of whatisup, a self-hosted WhatsApp gateway. Generated from the \
                proto files (proto/whatisup/v1) and the REST route table: every operation calls the gRPC method \
                named by its operationId. JSON is proto3 JSON with the proto field names: 64-bit integers are \
                strings, timestamps RFC 3339 UTC, unset optional fields null or absent. Errors are \
                {\"error\": {\"code\", \"message\", \"details\"}, \"request_id\"}. Every response carries \
                X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset; every POST honours an \
                Idempotency-Key header (24 h).",
            "license": {"name": "AGPL-3.0-only", "identifier": "AGPL-3.0-only"},
        },
        "security": [{"bearer": []}],
        "tags": tags.into_iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": error_responses,
            "headers": headers,
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": false,
                    "description": "1 to 255 printable ASCII characters. A repeat of the same request within 24 h \
                        gets the stored answer; another request under the same key answers 409 \
                        idempotency_conflict.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: zpk_live_… or zpk_test_…"},
                "token": {"type": "apiKey", "in": "query", "name": "token", "description": "The API key as ?token= (SSE only)."},
            },
        },
    }))
}

fn operation(g: &mut Gen, op: &Op) -> Result<Value, String> {
    let mut o = Map::new();
    let method_info = op.grpc.map(|m| g.method(m)).transpose()?;
    let (tag, summary) = match method_info {
        Some(m) => (
            m.service.clone(),
            m.comment
                .clone()
                .unwrap_or_else(|| format!("{}.{}", m.service, op.operation_id)),
        ),
        None => (op.tag.to_string(), op.summary.to_string()),
    };
    let (input, output) = match method_info {
        Some(m) => (Some(m.input.clone()), Some(m.output.clone())),
        None => (None, None),
    };
    o.insert("operationId".into(), op.operation_id.into());
    o.insert("tags".into(), json!([tag]));
    o.insert("summary".into(), summary.into());
    let input_msg = input.as_deref().map(|i| g.message(i)).transpose()?;
    let input_desc = input_msg.map(|m| (m.desc, m.path.clone(), m.file));

    // Parameters: the path's, then the query's, then headers.
    let mut params = Vec::new();
    let mut path_fields = Vec::new();
    for p in path_params(op.path) {
        let mut schema = json!({"type": "string"});
        let mut description = None;
        if let Some((desc, path, file)) = &input_desc
            && let Some(f) = bound_field(desc, p)
        {
            path_fields.push(f.name().to_string());
            if let Some(i) = desc.field.iter().position(|x| x.name() == f.name()) {
                let mut fp = path.clone();
                fp.extend([2, i as i32]);
                description = g.comment(*file, &fp);
            }
            schema = json!({"type": "string", "minLength": 1});
        } else if op.grpc.is_some() {
            return Err(format!("{}: no request field for {{{p}}}", op.operation_id));
        }
        let mut param = json!({"name": p, "in": "path", "required": true, "schema": schema});
        if let Some(d) = description {
            param["description"] = d.into();
        }
        params.push(param);
    }
    match op.query {
        Some(q) => {
            for qp in q {
                params.push(json!({"name": qp.name, "in": "query", "required": false,
                    "description": qp.description, "schema": {"type": "string"}}));
            }
        }
        None if !op.method.has_body() => {
            if let Some((desc, path, file)) = &input_desc {
                for (i, f) in desc.field.iter().enumerate() {
                    if path_fields.iter().any(|p| p == f.name()) {
                        continue;
                    }
                    let schema = g.field(f, Mode::Request)?;
                    let schema = strip_null(schema);
                    let mut fp = path.clone();
                    fp.extend([2, i as i32]);
                    let mut param = json!({"name": f.name(), "in": "query", "required": false, "schema": schema});
                    if let Some(d) = g.comment(*file, &fp) {
                        param["description"] = d.into();
                    }
                    params.push(param);
                }
            }
        }
        None => {}
    }
    if matches!(op.reply, Reply::EventStream) {
        params.push(
            json!({"name": "Last-Event-ID", "in": "header", "required": false,
            "description": "Resume after this cursor (as the last_event_id query parameter).",
            "schema": {"type": "string"}}),
        );
    }
    if op.method == Method::Post {
        params.push(json!({"$ref": "#/components/parameters/IdempotencyKey"}));
    }
    let has_params = !params.is_empty();
    if has_params {
        o.insert("parameters".into(), params.into());
    }

    // The body.
    let mut has_body = false;
    if op.method.has_body() {
        match op.body {
            Body::Raw => {
                has_body = true;
                o.insert("requestBody".into(), json!({
                    "required": true,
                    "description": "The raw bytes of the media; their type is the Content-Type (type/subtype, \
                        e.g. image/jpeg; multipart is refused). At most WHATISUP_MEDIA_MAX_BYTES.",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                                "application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                }));
            }
            Body::Proto => {
                if let Some(i) = &input {
                    let omit: Vec<&str> = path_fields.iter().map(String::as_str).collect();
                    let fields_left = input_desc
                        .as_ref()
                        .is_some_and(|(d, _, _)| d.field.iter().any(|f| !omit.contains(&f.name())));
                    if fields_left {
                        has_body = true;
                        let schema = g.message_ref(i, Mode::Request, &omit)?;
                        o.insert(
                            "requestBody".into(),
                            json!({
                                "required": false,
                                "description": "proto3 JSON; an empty body is the empty message.",
                                "content": {"application/json": {"schema": schema}},
                            }),
                        );
                    }
                }
            }
        }
    }

    // Answers.
    let mut responses = Map::new();
    let success_content = match op.reply {
        Reply::Proto => {
            let out = output.ok_or_else(|| format!("{}: no response message", op.operation_id))?;
            json!({"application/json": {"schema": g.message_ref(&out, Mode::Response, &[])?}})
        }
        Reply::EventStream => json!({"text/event-stream": {"schema": {
            "type": "string",
            "description": "Frames `id: <cursor>`, `event: <name>`, `data: <Event as JSON>` \
                (#/components/schemas/Event); a comment line every keep-alive interval; an `event: error` frame \
                with an error object ends the stream."}}}),
        Reply::Binary => json!({"*/*": {"schema": {}}}),
        Reply::Text => json!({"text/plain": {"schema": {"type": "string"}}}),
        Reply::Json(f) => json!({"application/json": {"schema": f()}}),
    };
    let extra: &[(&str, &str)] = if op.method == Method::Post {
        &[("Idempotent-Replayed", "")]
    } else {
        &[]
    };
    responses.insert(
        op.status.to_string(),
        json!({"description": "Success.", "headers": response_headers(extra), "content": success_content}),
    );
    let authed = op.auth != Auth::None;
    let mut errors = Vec::new();
    if authed && (has_params || has_body) {
        errors.push(400);
    }
    if authed {
        errors.extend([401, 403]);
    }
    if !path_params(op.path).is_empty() {
        errors.push(404);
    }
    if authed && (op.method != Method::Get || op.conflict) {
        errors.push(409);
    }
    if has_body {
        errors.push(413);
    }
    if authed {
        errors.push(429);
    }
    if op.operation_id != "Healthz"
        && op.operation_id != "Metrics"
        && op.operation_id != "GetOpenApi"
    {
        errors.extend([500, 503]);
    }
    for status in errors {
        if let Some((_, name, _)) = ERROR_RESPONSES.iter().find(|(s, _, _)| *s == status) {
            responses.insert(
                status.to_string(),
                json!({"$ref": format!("#/components/responses/{name}")}),
            );
        }
    }
    o.insert("responses".into(), Value::Object(responses));
    match op.auth {
        Auth::Bearer => {}
        Auth::BearerOrToken => {
            o.insert("security".into(), json!([{"bearer": []}, {"token": []}]));
        }
        Auth::None => {
            o.insert("security".into(), json!([]));
        }
    }
    Ok(Value::Object(o))
}

/// A query parameter is absent or a value: never JSON null.
fn strip_null(mut s: Value) -> Value {
    if let Some(Value::Array(types)) = s.get("type") {
        let t: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if t.len() == 1 {
            s["type"] = t[0].clone();
        }
    }
    s
}

/// The distinct paths the router must register for `ROUTES`.
pub fn route_paths() -> BTreeSet<&'static str> {
    ROUTES.iter().map(|op| op.route).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_generates() {
        let doc: Value = serde_json::from_str(document().expect("generates")).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        let ch = &doc["components"]["schemas"]["Channel"];
        assert_eq!(
            ch["properties"]["status_reason"]["type"],
            json!(["string", "null"])
        );
        assert!(ch["required"].as_array().unwrap().contains(&json!("id")));
        let ev = &doc["components"]["schemas"]["Event"];
        assert_eq!(
            ev["properties"]["sequence"]["type"], "string",
            "uint64 is a string"
        );
        let send = &doc["paths"]["/v1/channels/{id}/messages"]["post"];
        assert_eq!(send["operationId"], "SendMessage");
        assert!(send["responses"]["202"].is_object());
        let body = &doc["components"]["schemas"]["SendMessageRequest"];
        assert!(
            body["properties"].get("channel_id").is_none(),
            "path fields are not in the body"
        );
        assert_eq!(body["additionalProperties"], false);
        let list = &doc["paths"]["/v1/channels"]["get"]["parameters"];
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "limit")
        );
    }

    /// The router registers exactly the table's paths (methods are checked against a live gateway).
    #[test]
    fn router_and_table_have_the_same_paths() {
        let served: BTreeSet<&str> = super::super::rest_routes().paths.into_iter().collect();
        assert_eq!(
            served,
            route_paths(),
            "src/http/mod.rs routes vs openapi::ROUTES"
        );
    }
}
