//! The fake phone's half of device linking: reading the QR string, the pair-code exchange
//! (the inverse of `wacore::pair_code::PairCodeUtils`) and the ADV identity it signs for the new
//! companion.

use anyhow::{Context, anyhow, bail};
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::crypto::hkdf_sha256_into;
use whatsapp_rust::wacore::libsignal::crypto::{aes_256_gcm_decrypt, hmac_sha256};
use whatsapp_rust::wacore::libsignal::protocol::{KeyPair, PublicKey};
use whatsapp_rust::wacore::pair::PairUtils;
use whatsapp_rust::wacore::pair_code::PairCodeUtils;
use whatsapp_rust::waproto::whatsapp as wa;

const ADV_PREFIX_ACCOUNT_SIGNATURE: &[u8] = &[6, 0];
const ADV_PREFIX_DEVICE_SIGNATURE: &[u8] = &[6, 1];
const ADV_PREFIX_KEY_INDEX_LIST: &[u8] = &[6, 2];

/// What the phone reads off a QR code.
#[derive(Debug)]
pub(crate) struct ScannedQr {
    pub(crate) pairing_ref: String,
    pub(crate) noise_pub: [u8; 32],
    pub(crate) identity_pub: [u8; 32],
    pub(crate) adv_secret: [u8; 32],
}

pub(crate) fn parse_qr(qr: &str) -> anyhow::Result<ScannedQr> {
    use base64::Engine as _;
    let (pairing_ref, noise_pub, identity_pub) = PairUtils::parse_qr_code(qr.trim())?;
    let body = qr.trim();
    let body = body.rsplit_once('#').map_or(body, |(_, b)| b);
    let adv_b64 = body
        .split(',')
        .nth(3)
        .ok_or_else(|| anyhow!("QR code has no ADV secret field"))?;
    let adv = base64::prelude::BASE64_STANDARD
        .decode(adv_b64)
        .context("QR ADV secret is not base64")?;
    let adv_secret: [u8; 32] = adv
        .try_into()
        .map_err(|_| anyhow!("QR ADV secret is not 32 bytes"))?;
    Ok(ScannedQr {
        pairing_ref,
        noise_pub,
        identity_pub,
        adv_secret,
    })
}

/// The account-level facts the phone signs into a companion's identity.
pub(crate) struct AdvAccount<'a> {
    pub(crate) primary: &'a KeyPair,
    pub(crate) raw_id: u32,
    pub(crate) key_index: u32,
    pub(crate) timestamp: u64,
}

/// `<device-identity>` of `<pair-success>`: an `ADVSignedDeviceIdentity` signed by the primary
/// identity key, wrapped in an HMAC keyed with the companion's ADV secret.
pub(crate) fn signed_device_identity_hmac(
    account: &AdvAccount<'_>,
    companion_identity: &[u8; 32],
    adv_secret: &[u8; 32],
) -> anyhow::Result<Vec<u8>> {
    let details = wa::ADVDeviceIdentity {
        raw_id: Some(account.raw_id),
        timestamp: Some(account.timestamp),
        key_index: Some(account.key_index),
        account_type: Some(wa::ADVEncryptionType::E2EE),
        device_type: Some(wa::ADVEncryptionType::E2EE),
    }
    .encode_to_vec();
    let message = [ADV_PREFIX_ACCOUNT_SIGNATURE, &details, companion_identity].concat();
    let account_signature = sign(account.primary, &message)?;
    let signed = wa::ADVSignedDeviceIdentity {
        details: Some(details),
        account_signature_key: Some(account.primary.public_key.public_key_bytes().to_vec()),
        account_signature: Some(account_signature),
        device_signature: None,
    }
    .encode_to_vec();
    let hmac = hmac_sha256(adv_secret, &signed);
    Ok(wa::ADVSignedDeviceIdentityHMAC {
        details: Some(signed),
        hmac: Some(hmac.to_vec()),
        account_type: None,
    }
    .encode_to_vec())
}

/// Checks the companion's countersignature in its `<pair-device-sign>` answer.
pub(crate) fn verify_device_signature(
    signed_identity: &[u8],
    companion_identity: &[u8; 32],
) -> anyhow::Result<()> {
    let signed = wa::ADVSignedDeviceIdentity::decode_from_slice(signed_identity)
        .context("pair-device-sign identity does not decode")?;
    let (Some(details), Some(account_key), Some(device_sig)) = (
        signed.details.as_deref(),
        signed.account_signature_key.as_deref(),
        signed.device_signature.as_deref(),
    ) else {
        bail!("pair-device-sign identity lacks details, account key or device signature");
    };
    let message = [
        ADV_PREFIX_DEVICE_SIGNATURE,
        details,
        companion_identity,
        account_key,
    ]
    .concat();
    let device_key = PublicKey::from_djb_public_key_bytes(companion_identity)?;
    if !device_key.verify_signature(&message, device_sig) {
        bail!("the companion's device signature does not verify");
    }
    Ok(())
}

/// The `<key-index-list>` usync carries for an account with companions.
pub(crate) fn signed_key_index_list(
    account: &AdvAccount<'_>,
    valid_indexes: Vec<u32>,
) -> anyhow::Result<Vec<u8>> {
    let details = wa::ADVKeyIndexList {
        raw_id: Some(account.raw_id),
        timestamp: Some(account.timestamp),
        current_index: Some(account.key_index),
        valid_indexes,
        account_type: None,
    }
    .encode_to_vec();
    let signature = sign(
        account.primary,
        &[ADV_PREFIX_KEY_INDEX_LIST, &details].concat(),
    )?;
    Ok(wa::ADVSignedKeyIndexList {
        details: Some(details),
        account_signature: Some(signature),
        account_signature_key: None,
    }
    .encode_to_vec())
}

fn sign(key: &KeyPair, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut rng = rand::make_rng::<rand::rngs::StdRng>();
    Ok(key
        .private_key
        .calculate_signature(message, &mut rng)
        .map_err(|e| anyhow!("XEdDSA signing failed: {e}"))?
        .to_vec())
}

/// The phone's side of stage 2 of pair-code linking, after the user typed `code`.
pub(crate) struct PrimaryHello {
    /// The companion's ephemeral key as recovered with the typed code (garbage if it was wrong).
    pub(crate) companion_ephemeral: [u8; 32],
    pub(crate) ephemeral: KeyPair,
    /// `link_code_pairing_wrapped_primary_ephemeral_pub`.
    pub(crate) wrapped_ephemeral: Vec<u8>,
}

/// Unwraps the companion's ephemeral key with the typed code and wraps our own with it. Both
/// steps run PBKDF2 with 2^17 rounds, so call this off the async threads.
pub(crate) fn primary_hello(wrapped_companion: &[u8], code: &str) -> anyhow::Result<PrimaryHello> {
    // Same wire format both ways (salt ‖ iv ‖ AES-CTR ciphertext), so the companion-side
    // "decrypt the primary's key" routine also opens the companion's.
    let companion_ephemeral = PairCodeUtils::decrypt_primary_ephemeral_pub(wrapped_companion, code)
        .map_err(|e| anyhow!("cannot unwrap the companion's ephemeral key: {e}"))?;
    let ephemeral = crate::noise::new_key_pair();
    let ephemeral_pub: [u8; 32] = ephemeral
        .public_key
        .public_key_bytes()
        .try_into()
        .map_err(|_| anyhow!("ephemeral public key is not 32 bytes"))?;
    let wrapped_ephemeral = PairCodeUtils::encrypt_ephemeral_pub(&ephemeral_pub, code).to_vec();
    Ok(PrimaryHello {
        companion_ephemeral,
        ephemeral,
        wrapped_ephemeral,
    })
}

/// Opens the `companion_finish` key bundle and derives the ADV secret the companion now holds.
/// Fails (AEAD) when the code the phone typed was not the companion's.
pub(crate) fn open_key_bundle(
    hello: &PrimaryHello,
    primary_identity: &KeyPair,
    wrapped_bundle: &[u8],
    companion_identity: &[u8; 32],
) -> anyhow::Result<[u8; 32]> {
    if wrapped_bundle.len() < 32 + 12 + 16 {
        bail!("key bundle is {} bytes, too short", wrapped_bundle.len());
    }
    let companion_eph = PublicKey::from_djb_public_key_bytes(&hello.companion_ephemeral)
        .map_err(|e| anyhow!("recovered companion ephemeral key is invalid: {e}"))?;
    let ephemeral_shared = hello
        .ephemeral
        .private_key
        .calculate_agreement(&companion_eph)?;
    let (salt, rest) = wrapped_bundle.split_at(32);
    let (iv, ciphertext) = rest.split_at(12);
    let mut key = [0u8; 32];
    hkdf_sha256_into(
        &ephemeral_shared,
        Some(salt),
        b"link_code_pairing_key_bundle_encryption_key",
        &mut key,
    )
    .map_err(|e| anyhow!("HKDF: {e:?}"))?;
    let iv: [u8; 12] = iv
        .try_into()
        .map_err(|_| anyhow!("key bundle IV is not 12 bytes"))?;
    let mut bundle = Vec::with_capacity(96);
    aes_256_gcm_decrypt(&key, &iv, b"", ciphertext, &mut bundle).map_err(|_| {
        anyhow!("the key bundle does not open: the code entered on the phone is wrong")
    })?;
    if bundle.len() != 96 {
        bail!("key bundle is {} bytes, expected 96", bundle.len());
    }
    if bundle[..32] != companion_identity[..]
        || bundle[32..64] != *primary_identity.public_key.public_key_bytes()
    {
        bail!("key bundle names other identities than the ones exchanged");
    }
    let companion_id = PublicKey::from_djb_public_key_bytes(companion_identity)?;
    let identity_shared = primary_identity
        .private_key
        .calculate_agreement(&companion_id)?;
    let mut combined = Vec::with_capacity(96);
    combined.extend_from_slice(&ephemeral_shared);
    combined.extend_from_slice(&identity_shared);
    combined.extend_from_slice(&bundle[64..96]);
    let mut adv_secret = [0u8; 32];
    hkdf_sha256_into(&combined, None, b"adv_secret", &mut adv_secret)
        .map_err(|e| anyhow!("HKDF: {e:?}"))?;
    Ok(adv_secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phone side agrees with the published companion side on the pair-code exchange.
    #[test]
    fn pair_code_round_trip_matches_the_companion() {
        let code = "ABCD2345";
        let companion_eph = crate::noise::new_key_pair();
        let companion_identity = crate::noise::new_key_pair();
        let primary_identity = crate::noise::new_key_pair();
        let eph_pub: [u8; 32] = companion_eph
            .public_key
            .public_key_bytes()
            .try_into()
            .unwrap();
        let wrapped = PairCodeUtils::encrypt_ephemeral_pub(&eph_pub, code);

        let hello = primary_hello(&wrapped, code).unwrap();
        assert_eq!(hello.companion_ephemeral, eph_pub);
        let primary_eph =
            PairCodeUtils::decrypt_primary_ephemeral_pub(&hello.wrapped_ephemeral, code).unwrap();
        let primary_id_pub: [u8; 32] = primary_identity
            .public_key
            .public_key_bytes()
            .try_into()
            .unwrap();
        let (bundle, companion_adv) = PairCodeUtils::prepare_key_bundle(
            &companion_eph,
            &primary_eph,
            &primary_id_pub,
            &companion_identity,
        )
        .unwrap();
        let companion_id_pub: [u8; 32] = companion_identity
            .public_key
            .public_key_bytes()
            .try_into()
            .unwrap();
        let adv = open_key_bundle(&hello, &primary_identity, &bundle, &companion_id_pub).unwrap();
        assert_eq!(adv, companion_adv);

        let wrong = primary_hello(&wrapped, "ZZZZ2345").unwrap();
        assert!(open_key_bundle(&wrong, &primary_identity, &bundle, &companion_id_pub).is_err());
    }
}
