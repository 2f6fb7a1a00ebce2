//! Private keys at rest: envelope encryption. Each key gets its own data key (DEK);
//! the DEK is wrapped by a key-encryption key (KEK) that lives in a file or the
//! environment, never in the database. AES-256-GCM throughout; the row's identity is
//! bound in as associated data, so a sealed key cannot be moved to another row.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

/// Key-vault failures. Messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    /// The KEK is not 32 bytes of base64 (or raw).
    #[error(
        "the key-encryption key must be 32 random bytes, base64-encoded (e.g. `openssl rand -base64 32`)"
    )]
    BadKek,
    /// No configured KEK has this id (it was rotated away without re-wrapping).
    #[error("no key-encryption key with id {0} is configured")]
    UnknownKek(String),
    /// Decryption failed: wrong KEK, tampered data, or data moved between rows.
    #[error("a sealed private key does not open (wrong key-encryption key or tampered data)")]
    Tampered,
    /// The system random generator failed.
    #[error("no randomness available")]
    Random,
}

/// A key-encryption key. Its id is a short hash of the key, stored beside each sealed
/// key so rotation knows which KEK opens it.
pub struct Kek {
    id: String,
    key: [u8; 32],
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    /// From 32 random bytes given as base64 (surrounding whitespace ignored). Raw text
    /// is refused: a 32-character passphrase is not a 256-bit key.
    pub fn from_material(material: &[u8]) -> Result<Kek, VaultError> {
        let trimmed = material.trim_ascii();
        let bytes = match base64::engine::general_purpose::STANDARD.decode(trimmed) {
            Ok(b) if b.len() == 32 => b,
            _ => return Err(VaultError::BadKek),
        };
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        let id = hex::encode(&digest::digest(&digest::SHA256, &key).as_ref()[..8]);
        Ok(Kek { id, key })
    }

    /// A new random KEK, as the base64 text to store in a file.
    pub fn generate() -> Result<String, VaultError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| VaultError::Random)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn aead(&self) -> LessSafeKey {
        // 32 bytes is the AES-256 key length; `from_material` guarantees it.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).expect("32-byte AES-256 key"))
    }
}

/// A private key as stored: which KEK wrapped its DEK, the wrapped DEK, and the
/// encrypted key (each `nonce || ciphertext+tag`).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedKey(kek {}, {} bytes)",
            self.kek_id,
            self.ciphertext.len()
        )
    }
}

fn seal_with(key: &LessSafeKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VaultError::Random)?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| VaultError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open_with(key: &LessSafeKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(VaultError::Tampered);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Tampered)?;
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| VaultError::Tampered)?;
    Ok(plain.to_vec())
}

/// The configured KEKs: the first seals, every one of them can open.
#[derive(Debug)]
pub struct Vault {
    keks: Vec<Kek>,
}

impl Vault {
    /// `keks[0]` is the current KEK; older ones stay until everything is re-wrapped.
    pub fn new(keks: Vec<Kek>) -> Result<Vault, VaultError> {
        if keks.is_empty() {
            return Err(VaultError::BadKek);
        }
        Ok(Vault { keks })
    }

    pub fn current_id(&self) -> &str {
        self.keks[0].id()
    }

    /// Seal `plaintext` (a DER private key) for the row identified by `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<SealedKey, VaultError> {
        let mut dek_bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut dek_bytes)
            .map_err(|_| VaultError::Random)?;
        let dek = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &dek_bytes).map_err(|_| VaultError::Random)?,
        );
        let ciphertext = seal_with(&dek, plaintext, aad)?;
        let kek = &self.keks[0];
        let wrapped_dek = seal_with(&kek.aead(), &dek_bytes, aad)?;
        dek_bytes.fill(0);
        Ok(SealedKey {
            kek_id: kek.id.clone(),
            wrapped_dek,
            ciphertext,
        })
    }

    /// Open a sealed key for the row identified by `aad`.
    pub fn open(&self, sealed: &SealedKey, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        let kek = self
            .keks
            .iter()
            .find(|k| k.id == sealed.kek_id)
            .ok_or_else(|| VaultError::UnknownKek(sealed.kek_id.clone()))?;
        let mut dek_bytes = open_with(&kek.aead(), &sealed.wrapped_dek, aad)?;
        let dek = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &dek_bytes).map_err(|_| VaultError::Tampered)?,
        );
        dek_bytes.fill(0);
        open_with(&dek, &sealed.ciphertext, aad)
    }

    /// Re-wrap a sealed key's DEK with the current KEK (the key itself is untouched).
    pub fn rewrap(&self, sealed: &SealedKey, aad: &[u8]) -> Result<SealedKey, VaultError> {
        if sealed.kek_id == self.current_id() {
            return Ok(sealed.clone());
        }
        let old = self
            .keks
            .iter()
            .find(|k| k.id == sealed.kek_id)
            .ok_or_else(|| VaultError::UnknownKek(sealed.kek_id.clone()))?;
        let mut dek = open_with(&old.aead(), &sealed.wrapped_dek, aad)?;
        let wrapped_dek = seal_with(&self.keks[0].aead(), &dek, aad)?;
        dek.fill(0);
        Ok(SealedKey {
            kek_id: self.current_id().to_string(),
            wrapped_dek,
            ciphertext: sealed.ciphertext.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_rewraps() {
        let k1 = Kek::from_material(Kek::generate().unwrap().as_bytes()).unwrap();
        let k2 = Kek::from_material(Kek::generate().unwrap().as_bytes()).unwrap();
        let (id1, id2) = (k1.id().to_string(), k2.id().to_string());
        let b64 = |k: &Kek| base64::engine::general_purpose::STANDARD.encode(k.key);
        let old = Vault::new(vec![Kek::from_material(b64(&k1).as_bytes()).unwrap()]).unwrap();
        let sealed = old.seal(b"private key DER", b"row-1").unwrap();
        assert_eq!(sealed.kek_id, id1);
        assert!(
            !sealed
                .ciphertext
                .windows(15)
                .any(|w| w == b"private key DER")
        );
        assert_eq!(old.open(&sealed, b"row-1").unwrap(), b"private key DER");
        assert_eq!(
            old.open(&sealed, b"row-2"),
            Err(VaultError::Tampered),
            "bound to its row"
        );
        let mut bad = sealed.clone();
        bad.ciphertext[20] ^= 1;
        assert_eq!(old.open(&bad, b"row-1"), Err(VaultError::Tampered));

        // Rotation: the new KEK first, the old one kept to open and re-wrap.
        let rotated = Vault::new(vec![k2, k1]).unwrap();
        let rewrapped = rotated.rewrap(&sealed, b"row-1").unwrap();
        assert_eq!(rewrapped.kek_id, id2);
        assert_eq!(
            rewrapped.ciphertext, sealed.ciphertext,
            "the key itself is not re-encrypted"
        );
        let only_new = Vault::new(vec![
            Kek::from_material(b64(&rotated.keks[0]).as_bytes()).unwrap(),
        ])
        .unwrap();
        assert_eq!(
            only_new.open(&rewrapped, b"row-1").unwrap(),
            b"private key DER"
        );
        assert_eq!(
            only_new.open(&sealed, b"row-1"),
            Err(VaultError::UnknownKek(id1))
        );
        assert!(!format!("{rotated:?}").contains(&format!("{:?}", rotated.keks[0].key)));
    }

    #[test]
    fn kek_material_must_be_32_bytes() {
        assert_eq!(
            Kek::from_material(b"short").unwrap_err(),
            VaultError::BadKek
        );
        assert!(Kek::from_material(format!("{}\n", Kek::generate().unwrap()).as_bytes()).is_ok());
    }
}
