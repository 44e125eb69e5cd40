//! Signal identities for the fake phones and fake contacts: a small in-memory store per party
//! (a few maps instead of a full `InMemoryBackend`, to keep a thousand paired phones cheap), fed
//! to the published `wacore-libsignal` session functions.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use whatsapp_rust::wacore::libsignal::protocol::{
    CiphertextMessage, CiphertextMessageType, Direction, GenericSignedPreKey, IdentityChange,
    IdentityKey, IdentityKeyPair, IdentityKeyStore, KeyPair, PreKeyBundle, PreKeyId, PreKeyRecord,
    PreKeySignalMessage, PreKeyStore, ProtocolAddress, SessionRecord, SessionStore, SignalMessage,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore, Timestamp,
    UsePQRatchet, message_decrypt, message_encrypt, process_prekey_bundle,
};

use crate::noise::new_key_pair;

type SignalResult<T> = Result<T, SignalProtocolError>;

/// One Signal party (a fake contact, or the fake primary phone of a paired number).
pub(crate) struct Party {
    identity: Identities,
    sessions: Sessions,
    prekeys: PreKeys,
    signed: SignedPreKeys,
}

const SIGNED_PRE_KEY_ID: u32 = 1;

/// Outstanding one-time pre-keys a party keeps before discarding the oldest.
const MAX_ONE_TIME_PREKEYS: usize = 64;

impl Party {
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let identity_kp = new_key_pair();
        let signed_kp = new_key_pair();
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        let signature = identity_kp
            .private_key
            .calculate_signature(&signed_kp.public_key.serialize(), &mut rng)
            .map_err(|e| anyhow!("signing the signed pre-key: {e}"))?;
        let signed = SignedPreKeyRecord::new(
            SignedPreKeyId::from(SIGNED_PRE_KEY_ID),
            Timestamp::from_epoch_millis(crate::noise::now_secs() * 1000),
            &signed_kp,
            &signature,
        );
        let registration_id = rand::random_range(1..16_380u32);
        Ok(Self {
            identity: Identities {
                pair: IdentityKeyPair::new(
                    IdentityKey::new(identity_kp.public_key),
                    identity_kp.private_key,
                ),
                registration_id,
                known: HashMap::new(),
            },
            sessions: Sessions(HashMap::new()),
            prekeys: PreKeys {
                map: BTreeMap::new(),
                next_id: 1,
            },
            signed: SignedPreKeys {
                id: SIGNED_PRE_KEY_ID,
                record: signed,
                public: signed_kp.public_key.public_key_bytes().to_vec(),
                signature: signature.to_vec(),
            },
        })
    }

    pub(crate) fn identity_key_pair(&self) -> KeyPair {
        KeyPair::new(
            *self.identity.pair.public_key(),
            self.identity.pair.private_key().clone(),
        )
    }

    /// A bundle as the server hands it out: a fresh one-time pre-key every time, like a real
    /// account's pool (kept only until a pkmsg consumes it).
    pub(crate) fn fresh_bundle(&mut self, device_id: u16) -> anyhow::Result<PreKeyBundle> {
        let id = self.prekeys.next_id;
        self.prekeys.next_id = if id >= 0x00ff_fffe { 1 } else { id + 1 };
        let kp = new_key_pair();
        self.prekeys
            .map
            .insert(id, PreKeyRecord::new(PreKeyId::from(id), &kp));
        // Handed-out keys nobody used would pile up; a real pool is bounded too.
        while self.prekeys.map.len() > MAX_ONE_TIME_PREKEYS {
            self.prekeys.map.pop_first();
        }
        let signed_public =
            whatsapp_rust::wacore::libsignal::protocol::PublicKey::from_djb_public_key_bytes(
                &self.signed.public,
            )?;
        Ok(PreKeyBundle::new(
            self.identity.registration_id,
            u32::from(device_id).into(),
            Some((PreKeyId::from(id), kp.public_key)),
            SignedPreKeyId::from(self.signed.id),
            signed_public,
            self.signed.signature.clone(),
            *self.identity.pair.identity_key(),
        )?)
    }

    /// Drops the session with `remote`, so the next message starts a new one.
    pub(crate) fn forget_session(&mut self, remote: &ProtocolAddress) {
        self.sessions.0.remove(remote);
    }

    pub(crate) fn has_session(&self, remote: &ProtocolAddress) -> bool {
        self.sessions.0.contains_key(remote)
    }

    /// Starts an outgoing session from the remote device's published bundle (X3DH).
    pub(crate) async fn start_session(
        &mut self,
        remote: &ProtocolAddress,
        bundle: &PreKeyBundle,
    ) -> anyhow::Result<()> {
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        process_prekey_bundle(
            remote,
            &mut self.sessions,
            &mut self.identity,
            bundle,
            &mut rng,
            UsePQRatchet::No,
        )
        .await
        .context("processing the device's pre-key bundle")?;
        Ok(())
    }

    /// Encrypts for an established session; returns the stanza `enc` type and the ciphertext.
    pub(crate) async fn encrypt(
        &mut self,
        remote: &ProtocolAddress,
        plaintext: &[u8],
    ) -> anyhow::Result<(&'static str, Vec<u8>)> {
        let message =
            message_encrypt(plaintext, remote, &mut self.sessions, &mut self.identity).await?;
        let kind = match message.message_type() {
            CiphertextMessageType::PreKey => "pkmsg",
            CiphertextMessageType::Whisper => "msg",
            other => return Err(anyhow!("unexpected ciphertext type {other:?}")),
        };
        Ok((kind, message.serialize().to_vec()))
    }

    /// Decrypts a `pkmsg` or `msg` the client addressed to this party.
    pub(crate) async fn decrypt(
        &mut self,
        remote: &ProtocolAddress,
        enc_type: &str,
        ciphertext: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let message = match enc_type {
            "pkmsg" => {
                CiphertextMessage::PreKeySignalMessage(PreKeySignalMessage::try_from(ciphertext)?)
            }
            "msg" => CiphertextMessage::SignalMessage(SignalMessage::try_from(ciphertext)?),
            other => return Err(anyhow!("unsupported enc type {other:?}")),
        };
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        let result = message_decrypt(
            &message,
            remote,
            &mut self.sessions,
            &mut self.identity,
            &mut self.prekeys,
            &self.signed,
            &mut rng,
            UsePQRatchet::No,
        )
        .await?;
        if let Some(id) = result.consumed_prekey_id {
            self.prekeys.map.remove(&u32::from(id));
        }
        Ok(result.plaintext)
    }
}

/// Damages the message MAC of a `pkmsg`/`msg` so that it still parses but does not decrypt:
/// what the client sees when a session went out of step, answered with a retry receipt.
pub(crate) fn corrupt_mac(enc_type: &str, ciphertext: &mut [u8]) -> anyhow::Result<()> {
    // A SignalMessage ends with its 8-byte MAC; in a PreKeySignalMessage it is nested in a
    // protobuf field that other fields follow, so locate it there first.
    let end = match enc_type {
        "msg" => ciphertext.len(),
        "pkmsg" => {
            let outer = PreKeySignalMessage::try_from(&*ciphertext)?;
            let inner = outer.message().serialized();
            let start = ciphertext
                .windows(inner.len())
                .position(|w| w == inner)
                .ok_or_else(|| anyhow!("nested SignalMessage not found"))?;
            start + inner.len()
        }
        other => return Err(anyhow!("unsupported enc type {other:?}")),
    };
    let last = end
        .checked_sub(1)
        .and_then(|i| ciphertext.get_mut(i))
        .ok_or_else(|| anyhow!("empty ciphertext"))?;
    *last ^= 0xff;
    Ok(())
}

struct Identities {
    pair: IdentityKeyPair,
    registration_id: u32,
    known: HashMap<ProtocolAddress, IdentityKey>,
}

#[async_trait]
impl IdentityKeyStore for Identities {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        Ok(self.pair.clone())
    }

    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let previous = self.known.insert(address.clone(), *identity);
        Ok(IdentityChange::from_changed(
            previous.is_some_and(|p| p != *identity),
        ))
    }

    /// Trust on every use: a re-paired device legitimately shows up with a new identity.
    async fn is_trusted_identity(
        &self,
        _address: &ProtocolAddress,
        _identity: &IdentityKey,
        _direction: Direction,
    ) -> SignalResult<bool> {
        Ok(true)
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        Ok(self.known.get(address).copied())
    }
}

struct Sessions(HashMap<ProtocolAddress, SessionRecord>);

#[async_trait]
impl SessionStore for Sessions {
    async fn load_session(&self, address: &ProtocolAddress) -> SignalResult<Option<SessionRecord>> {
        Ok(self.0.get(address).cloned())
    }

    async fn has_session(&self, address: &ProtocolAddress) -> SignalResult<bool> {
        Ok(self.0.contains_key(address))
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: SessionRecord,
    ) -> SignalResult<()> {
        self.0.insert(address.clone(), record);
        Ok(())
    }
}

struct PreKeys {
    map: BTreeMap<u32, PreKeyRecord>,
    next_id: u32,
}

#[async_trait]
impl PreKeyStore for PreKeys {
    async fn get_pre_key(&self, prekey_id: PreKeyId) -> SignalResult<PreKeyRecord> {
        self.map
            .get(&u32::from(prekey_id))
            .cloned()
            .ok_or(SignalProtocolError::InvalidPreKeyId)
    }

    async fn save_pre_key(
        &mut self,
        prekey_id: PreKeyId,
        record: &PreKeyRecord,
    ) -> SignalResult<()> {
        self.map.insert(u32::from(prekey_id), record.clone());
        Ok(())
    }

    async fn remove_pre_key(&mut self, prekey_id: PreKeyId) -> SignalResult<()> {
        self.map.remove(&u32::from(prekey_id));
        Ok(())
    }
}

struct SignedPreKeys {
    id: u32,
    record: SignedPreKeyRecord,
    public: Vec<u8>,
    signature: Vec<u8>,
}

#[async_trait]
impl SignedPreKeyStore for SignedPreKeys {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SignalResult<SignedPreKeyRecord> {
        if u32::from(id) == self.id {
            Ok(self.record.clone())
        } else {
            Err(SignalProtocolError::InvalidSignedPreKeyId)
        }
    }

    async fn save_signed_pre_key(
        &mut self,
        _id: SignedPreKeyId,
        _record: &SignedPreKeyRecord,
    ) -> SignalResult<()> {
        Ok(())
    }
}

/// The pre-key material a paired companion published (registration payload, then its upload).
#[derive(Clone)]
pub(crate) struct DeviceKeys {
    pub(crate) registration_id: u32,
    pub(crate) identity: [u8; 32],
    pub(crate) signed_id: u32,
    pub(crate) signed_public: [u8; 32],
    pub(crate) signed_signature: Vec<u8>,
}

impl DeviceKeys {
    pub(crate) fn bundle(
        &self,
        device_id: u16,
        one_time: Option<(u32, [u8; 32])>,
    ) -> anyhow::Result<PreKeyBundle> {
        use whatsapp_rust::wacore::libsignal::protocol::PublicKey;
        let one_time = match one_time {
            Some((id, key)) => Some((
                PreKeyId::from(id),
                PublicKey::from_djb_public_key_bytes(&key)?,
            )),
            None => None,
        };
        Ok(PreKeyBundle::new(
            self.registration_id,
            u32::from(device_id).into(),
            one_time,
            SignedPreKeyId::from(self.signed_id),
            PublicKey::from_djb_public_key_bytes(&self.signed_public)?,
            self.signed_signature.clone(),
            IdentityKey::new(PublicKey::from_djb_public_key_bytes(&self.identity)?),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(name: &str, device: u32) -> ProtocolAddress {
        ProtocolAddress::new(name, device.into())
    }

    #[tokio::test]
    async fn two_parties_talk_both_ways() {
        let mut alice = Party::generate().unwrap();
        let mut bob = Party::generate().unwrap();
        let alice_addr = address("1111", 0);
        let bob_addr = address("2222", 0);

        let bundle = bob.fresh_bundle(0).unwrap();
        alice.start_session(&bob_addr, &bundle).await.unwrap();
        let (kind, ct) = alice.encrypt(&bob_addr, b"hello").await.unwrap();
        assert_eq!(kind, "pkmsg");
        assert_eq!(bob.decrypt(&alice_addr, kind, &ct).await.unwrap(), b"hello");

        let (kind, ct) = bob.encrypt(&alice_addr, b"hi back").await.unwrap();
        assert_eq!(kind, "msg");
        assert_eq!(
            alice.decrypt(&bob_addr, kind, &ct).await.unwrap(),
            b"hi back"
        );
        let (kind, _) = alice.encrypt(&bob_addr, b"again").await.unwrap();
        assert_eq!(kind, "msg", "a reply acknowledges the pre-key session");
    }
}
