//! `ctx.crypto`: hashes, HMAC, AEAD and randomness for functions, from `ring` and `blake3`.
//!
//! JavaScript has no constant-time comparison and QuickJS no crypto at all; doing this in Rust
//! means functions get audited primitives and cannot get the dangerous details (nonce reuse,
//! timing-leaky MAC checks) wrong. Keys arrive as base64 or, better, by secret name, so that a
//! key never needs to exist in the function's heap.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::SandboxError;

/// Most random bytes one request may ask for.
pub(super) const MAX_RANDOM_BYTES: usize = 4096;
/// Context string for keys derived from secrets that are not 32 raw bytes.
const KEY_DERIVATION_CONTEXT: &str = "klf ctx.crypto 2026-11 aead key from secret";

fn error(message: impl Into<String>) -> SandboxError {
    SandboxError::Crypto(message.into())
}

/// Hex digest of `data` (UTF-8) with `sha256`, `sha384`, `sha512` or `blake3`.
pub(super) fn hash(alg: &str, data: &str) -> Result<String, SandboxError> {
    let algorithm = match alg {
        "blake3" => return Ok(blake3::hash(data.as_bytes()).to_hex().to_string()),
        "sha256" => &digest::SHA256,
        "sha384" => &digest::SHA384,
        "sha512" => &digest::SHA512,
        other => {
            return Err(error(format!(
                "unknown hash {other:?} (known: sha256, sha384, sha512, blake3)"
            )));
        }
    };
    Ok(hex::encode(digest::digest(algorithm, data.as_bytes())))
}

fn hmac_algorithm(alg: &str) -> Result<hmac::Algorithm, SandboxError> {
    match alg {
        "sha256" => Ok(hmac::HMAC_SHA256),
        "sha384" => Ok(hmac::HMAC_SHA384),
        "sha512" => Ok(hmac::HMAC_SHA512),
        other => Err(error(format!(
            "unknown HMAC {other:?} (known: sha256, sha384, sha512)"
        ))),
    }
}

/// Hex HMAC of `data` under `key` (both UTF-8).
pub(super) fn hmac_hex(alg: &str, key: &str, data: &str) -> Result<String, SandboxError> {
    let key = hmac::Key::new(hmac_algorithm(alg)?, key.as_bytes());
    Ok(hex::encode(hmac::sign(&key, data.as_bytes())))
}

/// Whether `mac_hex` is the HMAC of `data` under `key`, compared in constant time. A MAC that is
/// not hex is simply wrong, not an error: it comes from whoever is being authenticated.
pub(super) fn hmac_verify(
    alg: &str,
    key: &str,
    data: &str,
    mac_hex: &str,
) -> Result<bool, SandboxError> {
    let key = hmac::Key::new(hmac_algorithm(alg)?, key.as_bytes());
    let Ok(mac) = hex::decode(mac_hex.trim()) else {
        return Ok(false);
    };
    Ok(hmac::verify(&key, data.as_bytes(), &mac).is_ok())
}

/// Constant-time string equality (the length is not hidden).
pub(super) fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn aead_algorithm(alg: &str) -> Result<&'static aead::Algorithm, SandboxError> {
    match alg {
        "chacha20-poly1305" => Ok(&aead::CHACHA20_POLY1305),
        "aes-256-gcm" => Ok(&aead::AES_256_GCM),
        other => Err(error(format!(
            "unknown cipher {other:?} (known: chacha20-poly1305, aes-256-gcm)"
        ))),
    }
}

/// A 32-byte key: `text` as base64 of exactly 32 bytes, or (for a secret that is a passphrase or
/// token) a key derived from it with BLAKE3's key derivation.
pub(super) fn key_from_secret(text: &str) -> [u8; 32] {
    match BASE64.decode(text.trim()) {
        Ok(bytes) if bytes.len() == 32 => {
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes);
            key
        }
        _ => blake3::derive_key(KEY_DERIVATION_CONTEXT, text.as_bytes()),
    }
}

/// A key given inline: base64 of exactly 32 bytes.
pub(super) fn key_from_base64(text: &str) -> Result<[u8; 32], SandboxError> {
    let bytes = BASE64.decode(text.trim()).map_err(|_| {
        error("`key` must be base64 of 32 bytes (ctx.crypto.generateKey() makes one)")
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        error(format!(
            "`key` must be 32 bytes, found {} (ctx.crypto.generateKey() makes one)",
            bytes.len()
        ))
    })
}

fn sealing_key(alg: &'static aead::Algorithm, key: &[u8; 32]) -> Result<LessSafeKey, SandboxError> {
    UnboundKey::new(alg, key)
        .map(LessSafeKey::new)
        .map_err(|_| error("the key does not fit the cipher"))
}

/// Encrypts `plaintext` with a fresh random nonce: `{alg, nonce, ciphertext}` in base64.
pub(super) fn encrypt(
    alg: &str,
    key: &[u8; 32],
    plaintext: &str,
    aad: &str,
) -> Result<Value, SandboxError> {
    let algorithm = aead_algorithm(alg)?;
    let sealing = sealing_key(algorithm, key)?;
    let mut nonce = [0u8; aead::NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| error("the system random generator failed"))?;
    let mut buffer = plaintext.as_bytes().to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut buffer,
        )
        .map_err(|_| error("encryption failed"))?;
    Ok(json!({
        "alg": alg,
        "nonce": BASE64.encode(nonce),
        "ciphertext": BASE64.encode(buffer),
    }))
}

/// Decrypts an envelope from [`encrypt`]. A wrong key, other `aad` or any tampering gives the
/// same error: AEAD cannot tell them apart, and saying more would help an attacker.
pub(super) fn decrypt(envelope: &Value, key: &[u8; 32], aad: &str) -> Result<String, SandboxError> {
    let field = |name: &str| {
        envelope.get(name).and_then(Value::as_str).ok_or_else(|| {
            error(format!(
                "the envelope has no string `{name}` (expected {{alg, nonce, ciphertext}} from ctx.crypto.encrypt)"
            ))
        })
    };
    let algorithm = aead_algorithm(field("alg")?)?;
    let nonce = BASE64
        .decode(field("nonce")?)
        .ok()
        .and_then(|bytes| <[u8; aead::NONCE_LEN]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| error("the envelope's `nonce` is not base64 of 12 bytes"))?;
    let mut buffer = BASE64
        .decode(field("ciphertext")?)
        .map_err(|_| error("the envelope's `ciphertext` is not base64"))?;
    let opening = sealing_key(algorithm, key)?;
    let plaintext = opening
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut buffer,
        )
        .map_err(|_| {
            error("decryption failed: wrong key, different aad, or the ciphertext was altered")
        })?;
    String::from_utf8(plaintext.to_vec())
        .map_err(|_| error("the decrypted bytes are not UTF-8 text"))
}

/// `n` random bytes, base64.
pub(super) fn random_base64(n: usize) -> Result<String, SandboxError> {
    if n > MAX_RANDOM_BYTES {
        return Err(error(format!(
            "randomBytes({n}) asks for more than {MAX_RANDOM_BYTES} bytes"
        )));
    }
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| error("the system random generator failed"))?;
    Ok(BASE64.encode(bytes))
}

/// A random (version 4) UUID.
pub(super) fn random_uuid() -> Result<String, SandboxError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| error("the system random generator failed"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_known_vectors() {
        assert_eq!(
            hash("sha256", "abc").expect("sha256"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hash("blake3", "").expect("blake3").len(), 64);
        assert!(
            hash("md5", "x")
                .unwrap_err()
                .to_string()
                .contains("known: sha256")
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_hex("sha256", "Jefe", "what do ya want for nothing?").expect("mac");
        assert_eq!(
            mac,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hmac_verify("sha256", "Jefe", "what do ya want for nothing?", &mac).expect("ok"));
        assert!(!hmac_verify("sha256", "Jefe", "what do ya want for nothing!", &mac).expect("ok"));
        assert!(!hmac_verify("sha256", "Jefe", "x", "not hex").expect("ok"));
    }

    #[test]
    fn aead_round_trips_and_detects_tampering() {
        for alg in ["chacha20-poly1305", "aes-256-gcm"] {
            let key = key_from_secret("correct horse battery staple");
            let envelope = encrypt(alg, &key, "4111 1111 1111 1111", "card").expect("seal");
            assert_eq!(
                decrypt(&envelope, &key, "card").expect("open"),
                "4111 1111 1111 1111"
            );
            assert!(decrypt(&envelope, &key, "other").is_err());
            let other = key_from_secret("another key");
            assert!(decrypt(&envelope, &other, "card").is_err());
            let mut altered = envelope.clone();
            altered["ciphertext"] = json!(BASE64.encode(b"garbage garbage garbage"));
            let message = decrypt(&altered, &key, "card").unwrap_err().to_string();
            assert!(message.contains("decryption failed"), "{message}");
        }
        assert!(decrypt(&json!({"alg": "chacha20-poly1305"}), &[0; 32], "").is_err());
        assert!(
            key_from_base64("AAAA")
                .unwrap_err()
                .to_string()
                .contains("32 bytes")
        );
    }

    #[test]
    fn randomness_has_the_asked_shape() {
        assert_eq!(
            BASE64
                .decode(random_base64(32).expect("bytes"))
                .expect("b64")
                .len(),
            32
        );
        assert!(random_base64(MAX_RANDOM_BYTES + 1).is_err());
        let uuid = random_uuid().expect("uuid");
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert!(equal("same", "same") && !equal("same", "diff"));
    }
}
