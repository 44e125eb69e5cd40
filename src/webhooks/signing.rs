//! Webhook signatures: Standard Webhooks (`webhook-signature: v1,<base64>` over `<id>.<ts>.<body>`) and the
//! compatibility header `X-WhatIsUp-Signature: t=<ts>,v1=<hex>` over `<ts>.<body>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 32;

/// A new secret's raw bytes and its display form (`whsec_` + base64).
pub fn new_secret() -> (Vec<u8>, String) {
    let mut key = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let shown = format!("{SECRET_PREFIX}{}", B64.encode(&key));
    (key, shown)
}

pub fn display(key: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", B64.encode(key))
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The signature headers of one attempt. `keys` are the active secrets, newest first.
pub struct Signed {
    pub webhook_signature: String,
    pub whatisup_signature: String,
}

pub fn sign(keys: &[&[u8]], msg_id: &str, timestamp: i64, body: &[u8]) -> Signed {
    let ts = timestamp.to_string();
    let standard: Vec<String> = keys
        .iter()
        .map(|k| {
            let sig = mac(k, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
            format!("v1,{}", B64.encode(sig))
        })
        .collect();
    let mut compat = format!("t={ts}");
    for k in keys {
        compat.push_str(",v1=");
        compat.push_str(&hex::encode(mac(k, &[ts.as_bytes(), b".", body])));
    }
    Signed {
        webhook_signature: standard.join(" "),
        whatisup_signature: compat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and its reference libraries' test vector).
    #[test]
    fn standard_webhooks_test_vector() {
        let key = B64
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        let s = sign(
            &[&key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            s.webhook_signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn one_entry_per_key() {
        let s = sign(&[b"new", b"old"], "evt_1", 10, b"{}");
        assert_eq!(s.webhook_signature.split(' ').count(), 2);
        assert_eq!(s.whatisup_signature.matches(",v1=").count(), 2);
        assert!(s.whatisup_signature.starts_with("t=10,v1="));
    }
}
