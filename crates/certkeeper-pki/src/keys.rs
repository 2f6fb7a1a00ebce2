//! Private keys on disk: passphrase protection (PKCS#8, AES-256, PBKDF2).

use openssl::pkey::PKey;
use openssl::symm::Cipher;

/// A key could not be read or protected. The key material is never part of the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The input is not a private key in PEM.
    #[error("not a readable private key")]
    Unreadable,
    /// The passphrase is empty or too short.
    #[error("the passphrase must be at least 8 characters")]
    WeakPassphrase,
    /// The passphrase does not open the key.
    #[error("wrong passphrase, or not an encrypted key")]
    WrongPassphrase,
}

/// Re-encode a PEM private key as encrypted PKCS#8 (PBES2, PBKDF2, AES-256-CBC).
pub fn encrypt_pkcs8(key_pem: &str, passphrase: &[u8]) -> Result<String, KeyError> {
    if passphrase.len() < 8 {
        return Err(KeyError::WeakPassphrase);
    }
    let key = PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|_| KeyError::Unreadable)?;
    let pem = key
        .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), passphrase)
        .map_err(|_| KeyError::Unreadable)?;
    String::from_utf8(pem).map_err(|_| KeyError::Unreadable)
}

/// Open an encrypted PEM key (PKCS#8 or legacy) and return it as unencrypted PKCS#8 PEM.
pub fn decrypt_pem(key_pem: &str, passphrase: &[u8]) -> Result<String, KeyError> {
    let key = PKey::private_key_from_pem_passphrase(key_pem.as_bytes(), passphrase)
        .map_err(|_| KeyError::WrongPassphrase)?;
    let pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|_| KeyError::Unreadable)?;
    String::from_utf8(pem).map_err(|_| KeyError::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypts_and_opens_again_only_with_the_passphrase() {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = encrypt_pkcs8(&k.serialize_pem(), b"correct horse").unwrap();
        assert!(enc.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert_eq!(
            decrypt_pem(&enc, b"wrong pass"),
            Err(KeyError::WrongPassphrase)
        );
        let plain = decrypt_pem(&enc, b"correct horse").unwrap();
        assert_eq!(
            rcgen::KeyPair::from_pem(&plain).unwrap().public_key_raw(),
            k.public_key_raw()
        );
        assert_eq!(
            encrypt_pkcs8(&k.serialize_pem(), b"short"),
            Err(KeyError::WeakPassphrase)
        );
    }
}
