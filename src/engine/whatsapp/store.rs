//! TEMPORARY SHIM until the PostgreSQL backend lands (not for commit).
use crate::crypto::MasterKeys;
use deadpool_postgres::Pool;
use std::sync::Arc;
use whatsapp_rust::store::traits::Backend;
pub fn open(_pool: Pool, _keys: Arc<MasterKeys>, _channel_id: &str) -> Arc<dyn Backend> {
    Arc::new(whatsapp_rust::wacore::store::InMemoryBackend::new())
}
pub async fn wipe(_pool: &Pool, _channel_id: &str) -> anyhow::Result<()> {
    Ok(())
}
