//! RustCrypto backend: `aes-gcm` and `chacha20poly1305` (pure Rust, runtime CPU detection).

use core::fmt;

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;

use super::{Aead, Backend, CryptoError, ICV_LEN, NONCE_LEN, Suite};

pub(super) fn new(suite: Suite, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError> {
    let bad = CryptoError::BadKeyLength {
        expected: suite.key_len(),
        got: key.len(),
    };
    Ok(match suite {
        Suite::Aes128Gcm16 => Box::new(RustCryptoAead {
            suite,
            cipher: Aes128Gcm::new_from_slice(key).map_err(|_| bad)?,
        }),
        Suite::Aes256Gcm16 => Box::new(RustCryptoAead {
            suite,
            cipher: Aes256Gcm::new_from_slice(key).map_err(|_| bad)?,
        }),
        Suite::ChaCha20Poly1305 => Box::new(RustCryptoAead {
            suite,
            cipher: ChaCha20Poly1305::new_from_slice(key).map_err(|_| bad)?,
        }),
    })
}

/// One RustCrypto cipher; all three have a 12-byte nonce and a 16-byte tag.
struct RustCryptoAead<C> {
    suite: Suite,
    cipher: C,
}

impl<C> fmt::Debug for RustCryptoAead<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustCryptoAead")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl<C> Aead for RustCryptoAead<C>
where
    C: AeadInOut<NonceSize = aes_gcm::aead::consts::U12, TagSize = aes_gcm::aead::consts::U16>
        + Send
        + Sync,
{
    fn suite(&self) -> Suite {
        self.suite
    }

    fn backend(&self) -> Backend {
        Backend::RustCrypto
    }

    #[inline]
    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; ICV_LEN], CryptoError> {
        let tag = self
            .cipher
            .encrypt_inout_detached(&(*nonce).into(), aad, buf.into())
            .map_err(|_| CryptoError::Authentication)?;
        Ok(tag.into())
    }

    #[inline]
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        icv: &[u8; ICV_LEN],
    ) -> Result<(), CryptoError> {
        self.cipher
            .decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &(*icv).into())
            .map_err(|_| CryptoError::Authentication)
    }

    #[inline]
    fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        out: &mut [u8],
    ) -> Result<[u8; ICV_LEN], CryptoError> {
        let io = InOutBuf::new(input, out).map_err(|_| CryptoError::LengthMismatch)?;
        let tag = self
            .cipher
            .encrypt_inout_detached(&(*nonce).into(), aad, io)
            .map_err(|_| CryptoError::Authentication)?;
        Ok(tag.into())
    }

    #[inline]
    fn open_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        out: &mut [u8],
        icv: &[u8; ICV_LEN],
    ) -> Result<(), CryptoError> {
        let io = InOutBuf::new(input, out).map_err(|_| CryptoError::LengthMismatch)?;
        self.cipher
            .decrypt_inout_detached(&(*nonce).into(), aad, io, &(*icv).into())
            .map_err(|_| CryptoError::Authentication)
    }
}
