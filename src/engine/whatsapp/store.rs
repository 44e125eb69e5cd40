//! PostgreSQL backend for the whatsapp-rust store traits (sealed, keyed by channel).
