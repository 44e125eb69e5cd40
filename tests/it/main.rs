//! Black-box tests against real gateways, a real PostgreSQL and real HTTP/SSE/gRPC clients.

mod audit;
mod auth;
mod cli;
mod cluster;
mod dashboard;
mod faces;
mod fuzz;
mod grpc;
mod input;
mod journal;
mod lifecycle;
mod media;
mod messages;
mod openapi;
mod restart;
mod util;
#[cfg(feature = "fake-whatsapp")]
mod wa;
mod wa_store;
mod webhooks;
