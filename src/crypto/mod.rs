//! Sealing secrets at rest (AES-256-GCM under keys derived from the master key) and keyed hashing of API keys.
//!
//! Every sealed value is stored beside the id (`kid`) of the master key that sealed it, so a new master key can be
//! introduced while the previous ones still open what they sealed (`WHATISUP_MASTER_KEY_PREVIOUS`).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 12;

struct KeyEntry {
    kid: String,
    cipher: Aes256Gcm,
    api_key_hmac: [u8; 32],
    media_url_hmac: [u8; 32],
}

impl KeyEntry {
    fn new(master: &[u8; 32]) -> KeyEntry {
        // Separate sub-keys per purpose, so no two uses ever share a key.
        let seal_key = derive(master, b"whatisup/v1/seal");
        let api_key_hmac = derive(master, b"whatisup/v1/api-key-hash");
        let media_url_hmac = derive(master, b"whatisup/v1/media-url");
        let kid = hex::encode(&Sha256::digest(derive(master, b"whatisup/v1/kid"))[..8]);
        KeyEntry {
            kid,
            cipher: Aes256Gcm::new(&seal_key.into()),
            api_key_hmac,
            media_url_hmac,
        }
    }
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(master).expect("HMAC takes any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

pub struct MasterKeys {
    current: KeyEntry,
    previous: Vec<KeyEntry>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys")
            .field("kid", &self.current.kid)
            .finish_non_exhaustive()
    }
}

fn decode_key(b64: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = B64.decode(b64.trim()).context("master key is not base64")?;
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| anyhow!("master key must be 32 bytes, got {}", v.len()))
}

impl MasterKeys {
    pub fn from_bytes(current: [u8; 32], previous: &[[u8; 32]]) -> MasterKeys {
        MasterKeys {
            current: KeyEntry::new(&current),
            previous: previous.iter().map(KeyEntry::new).collect(),
        }
    }

    /// From `WHATISUP_MASTER_KEY`, or from `<data_dir>/master.key`, generating that file (0600) on first start.
    pub fn load(
        configured: Option<&str>,
        previous: Option<&str>,
        data_dir: &Path,
    ) -> anyhow::Result<MasterKeys> {
        let current = match configured {
            Some(k) => decode_key(k)?,
            None => {
                let path = data_dir.join("master.key");
                if path.exists() {
                    decode_key(
                        &std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )?
                } else {
                    std::fs::create_dir_all(data_dir)
                        .with_context(|| format!("creating {}", data_dir.display()))?;
                    let mut key = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut key);
                    write_private(&path, &B64.encode(key))?;
                    tracing::warn!(
                        path = %path.display(),
                        "WHATISUP_MASTER_KEY is not set: generated a master key into this file. Back it up: without it \
                         sealed sessions cannot be opened and every channel needs a new QR scan."
                    );
                    key
                }
            }
        };
        let previous: Vec<[u8; 32]> = previous
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(decode_key)
            .collect::<anyhow::Result<_>>()?;
        Ok(MasterKeys::from_bytes(current, &previous))
    }

    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// Seals `plaintext`; `aad` binds it to its place (e.g. the channel id), so a sealed value moved to another
    /// row does not open. Returns (kid, nonce || ciphertext).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> (String, Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        (self.current.kid.clone(), out)
    }

    pub fn open(&self, kid: &str, aad: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        let entry = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|e| e.kid == kid)
            .ok_or_else(|| {
                anyhow!("sealed with master key {kid}, which this node does not have")
            })?;
        if sealed.len() < NONCE_LEN + 16 {
            bail!("sealed value too short");
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        entry
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| anyhow!("sealed value does not open (wrong key or tampered)"))
    }

    /// The keyed hash an API key is stored under, with the current master key.
    pub fn hash_api_key(&self, secret: &str) -> (String, Vec<u8>) {
        (
            self.current.kid.clone(),
            hmac(&self.current.api_key_hmac, secret),
        )
    }

    /// The signature of a media download token's payload, with the current master key.
    pub fn sign_media(&self, payload: &str) -> Vec<u8> {
        hmac(&self.current.media_url_hmac, payload)
    }

    /// Whether `sig` signs `payload` under the current or a previous master key (constant time).
    pub fn verify_media(&self, payload: &str, sig: &[u8]) -> bool {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .any(|e| {
                let mut mac = <HmacSha256 as Mac>::new_from_slice(&e.media_url_hmac)
                    .expect("HMAC takes any key length");
                mac.update(payload.as_bytes());
                mac.verify_slice(sig).is_ok()
            })
    }

    /// The hashes a presented key may be stored under (current and previous master keys).
    pub fn api_key_lookup_hashes(&self, secret: &str) -> Vec<Vec<u8>> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .map(|e| hmac(&e.api_key_hmac, secret))
            .collect()
    }
}

fn hmac(key: &[u8; 32], data: &str) -> Vec<u8> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` uniformly random base62 characters (43 of them carry 256 bits).
pub fn random_base62(n: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut buf = [0u8; 64];
        rng.fill_bytes(&mut buf);
        for b in buf {
            // Rejection sampling keeps the distribution uniform (248 = 4 * 62).
            if b < 248 && out.len() < n {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A new API key secret: `zpk_live_…` or `zpk_test_…` with 256 random bits.
pub fn new_api_key(test: bool) -> String {
    format!(
        "zpk_{}_{}",
        if test { "test" } else { "live" },
        random_base62(43)
    )
}

/// Whether a presented token has the shape of one of our keys (else `auth_malformed`).
pub fn api_key_well_formed(token: &str) -> Option<bool> {
    let (test, tail) = if let Some(t) = token.strip_prefix("zpk_test_") {
        (true, t)
    } else if let Some(t) = token.strip_prefix("zpk_live_") {
        (false, t)
    } else {
        return None;
    };
    let ok = (20..=128).contains(&tail.len())
        && tail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(test)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> MasterKeys {
        MasterKeys::from_bytes([seed; 32], &[])
    }

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let k = keys(1);
        let (kid, sealed) = k.seal(b"ch_1", b"secret state");
        assert_eq!(k.open(&kid, b"ch_1", &sealed).unwrap(), b"secret state");
        assert!(
            k.open(&kid, b"ch_2", &sealed).is_err(),
            "moved to another channel must not open"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open(&kid, b"ch_1", &tampered).is_err());
        assert!(!sealed.windows(12).any(|w| w == b"secret state"));
    }

    #[test]
    fn rotation_opens_with_previous_key() {
        let old = keys(1);
        let (kid, sealed) = old.seal(b"a", b"x");
        let rotated = MasterKeys::from_bytes([2; 32], &[[1; 32]]);
        assert_ne!(rotated.kid(), kid);
        assert_eq!(rotated.open(&kid, b"a", &sealed).unwrap(), b"x");
        assert!(keys(2).open(&kid, b"a", &sealed).is_err());
        assert_eq!(
            rotated.api_key_lookup_hashes("k")[1],
            old.hash_api_key("k").1
        );
    }

    #[test]
    fn api_keys_have_the_contract_shape() {
        let k = new_api_key(true);
        assert!(k.starts_with("zpk_test_"));
        assert_eq!(k.len(), 9 + 43);
        assert_eq!(api_key_well_formed(&k), Some(true));
        assert_eq!(api_key_well_formed(&new_api_key(false)), Some(false));
        assert_eq!(api_key_well_formed("zpk_live_short"), None);
        assert_eq!(api_key_well_formed("Bearer nope"), None);
        assert_ne!(new_api_key(false), new_api_key(false));
    }

    #[test]
    fn master_key_file_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKeys::load(None, None, dir.path()).unwrap();
        let b = MasterKeys::load(None, None, dir.path()).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert!(MasterKeys::load(Some("bm90IDMyIGJ5dGVz"), None, dir.path()).is_err());
    }
}
