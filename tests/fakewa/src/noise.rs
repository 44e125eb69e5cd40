//! The responder side of WhatsApp's Noise handshakes (XX, IK and XX-fallback) and the transport
//! ciphers that follow. The initiator lives in `wacore-noise`; this is its mirror image, built from
//! the same public primitives (`NoiseHandshake`, `NoiseCipher`).

use anyhow::{Context, anyhow, bail};
use whatsapp_rust::buffa::{Message as _, MessageField};
use whatsapp_rust::wacore::handshake::{NoiseCipher, NoiseHandshake};
use whatsapp_rust::wacore::libsignal::protocol::KeyPair;
use whatsapp_rust::wacore_binary::consts::{
    NOISE_PATTERN_IK, NOISE_PATTERN_XX, NOISE_PATTERN_XXFALLBACK, WA_CONN_HEADER,
};
use whatsapp_rust::waproto::whatsapp as wa;

/// The server's long-lived Noise key and the certificate chain that vouches for it.
pub(crate) struct ServerIdentity {
    static_kp: KeyPair,
    cert_chain: Vec<u8>,
}

impl ServerIdentity {
    /// A fresh static key per server process, with a self-made root → intermediate → leaf chain.
    /// The client is built with `danger-skip-cert-chain-verify`, which skips only the two XEdDSA
    /// checks; serials, the leaf key and the validity window are still checked, so those are real.
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let static_kp = new_key_pair();
        let root = new_key_pair();
        let intermediate = new_key_pair();
        let now = now_secs();
        let not_before = now.saturating_sub(86_400);
        let not_after = now + 10 * 365 * 86_400;

        let intermediate_details = wa::cert_chain::noise_certificate::Details {
            serial: Some(1),
            issuer_serial: Some(0),
            key: Some(intermediate.public_key.public_key_bytes().to_vec()),
            not_before: Some(not_before),
            not_after: Some(not_after),
        }
        .encode_to_vec();
        let leaf_details = wa::cert_chain::noise_certificate::Details {
            serial: Some(2),
            issuer_serial: Some(1),
            key: Some(static_kp.public_key.public_key_bytes().to_vec()),
            not_before: Some(not_before),
            not_after: Some(not_after),
        }
        .encode_to_vec();
        let intermediate_sig = sign(&root, &intermediate_details)?;
        let leaf_sig = sign(&intermediate, &leaf_details)?;
        let cert_chain = wa::CertChain {
            leaf: MessageField::some(wa::cert_chain::NoiseCertificate {
                details: Some(leaf_details),
                signature: Some(leaf_sig),
            }),
            intermediate: MessageField::some(wa::cert_chain::NoiseCertificate {
                details: Some(intermediate_details),
                signature: Some(intermediate_sig),
            }),
        }
        .encode_to_vec();
        Ok(Self {
            static_kp,
            cert_chain,
        })
    }

    fn static_pub(&self) -> &[u8] {
        self.static_kp.public_key.public_key_bytes()
    }

    fn static_priv(&self) -> &[u8] {
        self.static_kp.private_key.serialize()
    }
}

fn sign(key: &KeyPair, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut rng = rand::make_rng::<rand::rngs::StdRng>();
    Ok(key
        .private_key
        .calculate_signature(message, &mut rng)
        .map_err(|e| anyhow!("XEdDSA signing failed: {e}"))?
        .to_vec())
}

pub(crate) fn new_key_pair() -> KeyPair {
    KeyPair::generate(&mut rand::make_rng::<rand::rngs::StdRng>())
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The ciphers of an established connection. The initiator writes with the first half of the
/// final split and reads with the second, so the responder does the opposite.
pub(crate) struct Transport {
    read: NoiseCipher,
    write: NoiseCipher,
    read_counter: u32,
    write_counter: u32,
}

impl Transport {
    fn from_handshake(noise: NoiseHandshake) -> anyhow::Result<Self> {
        let (initiator_write, initiator_read) = noise.finish()?;
        Ok(Self {
            read: initiator_write,
            write: initiator_read,
            read_counter: 0,
            write_counter: 0,
        })
    }

    pub(crate) fn encrypt(&mut self, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let counter = self.write_counter;
        self.write_counter = counter
            .checked_add(1)
            .ok_or_else(|| anyhow!("write counter exhausted"))?;
        self.write
            .encrypt_with_counter(counter, plaintext)
            .map_err(|e| anyhow!("frame encryption failed: {e}"))
    }

    pub(crate) fn decrypt(
        &mut self,
        mut frame: bytes::BytesMut,
    ) -> anyhow::Result<bytes::BytesMut> {
        let counter = self.read_counter;
        self.read_counter = counter
            .checked_add(1)
            .ok_or_else(|| anyhow!("read counter exhausted"))?;
        self.read
            .decrypt_in_place_with_counter(counter, &mut frame)
            .map_err(|e| anyhow!("frame {counter} failed to decrypt: {e}"))?;
        Ok(frame)
    }
}

/// What the responder learned from a finished handshake.
pub(crate) struct Established {
    pub(crate) transport: Transport,
    /// The client's Noise static key: the credential a login is checked against.
    pub(crate) client_static: [u8; 32],
    /// The decrypted `ClientPayload`.
    pub(crate) payload: Vec<u8>,
    pub(crate) pattern: &'static str,
}

/// The responder between sending its ServerHello and receiving the ClientFinish (XX and
/// XX-fallback only; IK finishes in one round trip).
pub(crate) struct AwaitingFinish {
    noise: NoiseHandshake,
    ephemeral: KeyPair,
    pattern: &'static str,
}

pub(crate) enum HelloOutcome {
    /// IK succeeded; the ServerHello completes the handshake.
    Done(Box<Established>, Vec<u8>),
    /// XX or XX-fallback: send the ServerHello, then wait for ClientFinish.
    NeedFinish(Box<AwaitingFinish>, Vec<u8>),
}

/// Answers a ClientHello. A hello that carries an encrypted static is IK; if it does not decrypt
/// under our static key (the client cached another server's key, e.g. before a restart) the
/// responder switches to XX-fallback, exactly as WhatsApp does, instead of failing.
pub(crate) fn respond_to_hello(
    identity: &ServerIdentity,
    client_hello_frame: &[u8],
) -> anyhow::Result<HelloOutcome> {
    let message = wa::HandshakeMessage::decode_from_slice(client_hello_frame)
        .context("ClientHello is not a HandshakeMessage")?;
    let hello = message
        .client_hello
        .into_option()
        .ok_or_else(|| anyhow!("first handshake message has no client_hello"))?;
    let client_ephemeral: [u8; 32] = hello
        .ephemeral
        .as_deref()
        .and_then(|e| e.try_into().ok())
        .ok_or_else(|| anyhow!("client ephemeral key missing or not 32 bytes"))?;

    if let (Some(enc_static), Some(enc_payload)) =
        (hello.r#static.as_deref(), hello.payload.as_deref())
    {
        match try_ik(identity, &client_ephemeral, enc_static, enc_payload) {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::debug!("IK hello rejected ({e:#}); answering with XX-fallback");
                return start_xx(identity, &client_ephemeral, NOISE_PATTERN_XXFALLBACK);
            }
        }
    }
    start_xx(identity, &client_ephemeral, NOISE_PATTERN_XX)
}

fn try_ik(
    identity: &ServerIdentity,
    client_ephemeral: &[u8; 32],
    enc_static: &[u8],
    enc_payload: &[u8],
) -> anyhow::Result<HelloOutcome> {
    let mut noise = NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER)?;
    noise.authenticate(identity.static_pub());
    noise.authenticate(client_ephemeral);
    noise.mix_shared_secret(identity.static_priv(), client_ephemeral)?;
    let client_static: [u8; 32] = noise
        .decrypt(enc_static)?
        .try_into()
        .map_err(|_| anyhow!("client static is not 32 bytes"))?;
    noise.mix_shared_secret(identity.static_priv(), &client_static)?;
    let payload = noise.decrypt(enc_payload)?;

    let ephemeral = new_key_pair();
    noise.authenticate(ephemeral.public_key.public_key_bytes());
    noise.mix_shared_secret(ephemeral.private_key.serialize(), client_ephemeral)?;
    noise.mix_shared_secret(ephemeral.private_key.serialize(), &client_static)?;
    // The IK client decrypts this payload only to authenticate the transcript; send the chain.
    let enc_cert = noise.encrypt(&identity.cert_chain)?;
    let server_hello = server_hello(ephemeral.public_key.public_key_bytes(), None, enc_cert);
    let transport = Transport::from_handshake(noise)?;
    Ok(HelloOutcome::Done(
        Box::new(Established {
            transport,
            client_static,
            payload,
            pattern: "IK",
        }),
        server_hello,
    ))
}

fn start_xx(
    identity: &ServerIdentity,
    client_ephemeral: &[u8; 32],
    pattern: &'static str,
) -> anyhow::Result<HelloOutcome> {
    let mut noise = NoiseHandshake::new(pattern, &WA_CONN_HEADER)?;
    noise.authenticate(client_ephemeral);
    let ephemeral = new_key_pair();
    noise.authenticate(ephemeral.public_key.public_key_bytes());
    noise.mix_shared_secret(ephemeral.private_key.serialize(), client_ephemeral)?;
    let enc_static = noise.encrypt(identity.static_pub())?;
    noise.mix_shared_secret(identity.static_priv(), client_ephemeral)?;
    let enc_cert = noise.encrypt(&identity.cert_chain)?;
    let hello = server_hello(
        ephemeral.public_key.public_key_bytes(),
        Some(enc_static),
        enc_cert,
    );
    let name = if pattern == NOISE_PATTERN_XX {
        "XX"
    } else {
        "XX-fallback"
    };
    Ok(HelloOutcome::NeedFinish(
        Box::new(AwaitingFinish {
            noise,
            ephemeral,
            pattern: name,
        }),
        hello,
    ))
}

impl AwaitingFinish {
    pub(crate) fn finish(mut self, client_finish_frame: &[u8]) -> anyhow::Result<Established> {
        let message = wa::HandshakeMessage::decode_from_slice(client_finish_frame)
            .context("ClientFinish is not a HandshakeMessage")?;
        let finish = message
            .client_finish
            .into_option()
            .ok_or_else(|| anyhow!("second handshake message has no client_finish"))?;
        let (Some(enc_static), Some(enc_payload)) =
            (finish.r#static.as_deref(), finish.payload.as_deref())
        else {
            bail!("client_finish lacks static or payload");
        };
        let client_static: [u8; 32] = self
            .noise
            .decrypt(enc_static)?
            .try_into()
            .map_err(|_| anyhow!("client static is not 32 bytes"))?;
        self.noise
            .mix_shared_secret(self.ephemeral.private_key.serialize(), &client_static)?;
        let payload = self.noise.decrypt(enc_payload)?;
        Ok(Established {
            transport: Transport::from_handshake(self.noise)?,
            client_static,
            payload,
            pattern: self.pattern,
        })
    }
}

fn server_hello(ephemeral: &[u8], enc_static: Option<Vec<u8>>, enc_payload: Vec<u8>) -> Vec<u8> {
    wa::HandshakeMessage {
        server_hello: MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(ephemeral.to_vec()),
            r#static: enc_static,
            payload: Some(enc_payload),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Strips the connection preamble the client writes before its first frame: an optional
/// edge-routing pre-intro (`ED\0\1` + 3-byte length + data) and the 4-byte `WA` header.
/// Returns how many bytes the preamble takes, or `None` while more bytes are needed.
pub(crate) fn preamble_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let mut offset = 0;
    if buf.len() < 2 {
        return Ok(None);
    }
    if &buf[..2] == b"ED" {
        if buf.len() < 7 {
            return Ok(None);
        }
        if buf[2..4] != [0, 1] {
            bail!("unknown edge-routing pre-intro version {:?}", &buf[2..4]);
        }
        let len = (usize::from(buf[4]) << 16) | (usize::from(buf[5]) << 8) | usize::from(buf[6]);
        offset = 7 + len;
    }
    if buf.len() < offset + 4 {
        return Ok(None);
    }
    let header = &buf[offset..offset + 4];
    if header[..2] != WA_CONN_HEADER[..2] {
        bail!("connection does not start with the WA header: {header:02x?}");
    }
    Ok(Some(offset + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_with_and_without_edge_routing() {
        assert_eq!(preamble_len(b"W").unwrap(), None);
        assert_eq!(preamble_len(b"WA\x06\x03\x00").unwrap(), Some(4));
        let mut ed = b"ED\x00\x01\x00\x00\x02ab".to_vec();
        ed.extend_from_slice(b"WA\x06\x03");
        assert_eq!(preamble_len(&ed).unwrap(), Some(13));
        assert_eq!(preamble_len(&ed[..10]).unwrap(), None);
        assert!(preamble_len(b"GET / HTTP").is_err());
    }
}
