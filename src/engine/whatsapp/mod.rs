//! The WhatsApp engine on whatsapp-rust. The only module that may name the crate's types.

pub mod store;
