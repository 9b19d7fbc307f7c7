//! aws-lc-rs backend (AWS-LC assembly: AES-NI, VAES/AVX-512 where present).

use core::fmt;

use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};

use super::{Aead, Backend, CryptoError, ICV_LEN, NONCE_LEN, Suite};

pub(super) fn new(suite: Suite, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError> {
    let alg = match suite {
        Suite::Aes128Gcm16 => &AES_128_GCM,
        Suite::Aes256Gcm16 => &AES_256_GCM,
        Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
    };
    let key = UnboundKey::new(alg, key).map_err(|_| CryptoError::BadKeyLength {
        expected: suite.key_len(),
        got: key.len(),
    })?;
    Ok(Box::new(AwsLcAead {
        suite,
        key: LessSafeKey::new(key),
    }))
}

/// A `LessSafeKey`: the nonce discipline (IV from the sequence number) is enforced by the SA, not here.
struct AwsLcAead {
    suite: Suite,
    key: LessSafeKey,
}

impl fmt::Debug for AwsLcAead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsLcAead")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Aead for AwsLcAead {
    fn suite(&self) -> Suite {
        self.suite
    }

    fn backend(&self) -> Backend {
        Backend::AwsLc
    }

    #[inline]
    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; ICV_LEN], CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| CryptoError::Authentication)?;
        let mut out = [0u8; ICV_LEN];
        let t = tag.as_ref();
        if t.len() != ICV_LEN {
            return Err(CryptoError::Authentication);
        }
        out.copy_from_slice(t);
        Ok(out)
    }

    #[inline]
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        icv: &[u8; ICV_LEN],
    ) -> Result<(), CryptoError> {
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                icv,
                buf,
            )
            .map(|_| ())
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
        if input.len() != out.len() {
            return Err(CryptoError::LengthMismatch);
        }
        let mut tag = [0u8; ICV_LEN];
        self.key
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                input,
                out,
                &[],
                &mut tag,
            )
            .map_err(|_| CryptoError::Authentication)?;
        Ok(tag)
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
        if input.len() != out.len() {
            return Err(CryptoError::LengthMismatch);
        }
        self.key
            .open_separate_gather(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                input,
                icv,
                out,
            )
            .map_err(|_| CryptoError::Authentication)
    }
}
