//! AEAD transforms for ESP, behind one trait with two backends chosen at run time.
//!
//! Every suite here is a combined-mode (AEAD) transform with a 4-byte salt taken from the end of the
//! KEYMAT, an 8-byte explicit IV carried in each packet and a 16-byte ICV:
//! ENCR_AES_GCM_16 (RFC 4106) with 128- and 256-bit keys, and ENCR_CHACHA20_POLY1305 (RFC 7634).

mod awslc;
mod rustcrypto;

use core::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// ICV length of every suite here (RFC 4106 §6: 16 bytes MUST; RFC 7634 §2).
pub const ICV_LEN: usize = 16;
/// Salt taken from the KEYMAT (RFC 4106 §8.1, RFC 7634 §2).
pub const SALT_LEN: usize = 4;
/// Explicit IV carried in each packet (RFC 4106 §3.1, RFC 7634 §2).
pub const IV_LEN: usize = 8;
/// Nonce = salt ‖ IV (RFC 4106 §4, RFC 7634 §2).
pub const NONCE_LEN: usize = SALT_LEN + IV_LEN;

/// An ESP AEAD transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// ENCR_AES_GCM_16 (transform 20), Key Length 128.
    Aes128Gcm16,
    /// ENCR_AES_GCM_16 (transform 20), Key Length 256.
    Aes256Gcm16,
    /// ENCR_CHACHA20_POLY1305 (transform 28).
    ChaCha20Poly1305,
}

impl Suite {
    /// All suites, in a stable order.
    pub const ALL: [Suite; 3] = [
        Suite::Aes128Gcm16,
        Suite::Aes256Gcm16,
        Suite::ChaCha20Poly1305,
    ];

    /// Length of the cipher key (without the salt).
    pub const fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm16 => 16,
            Suite::Aes256Gcm16 | Suite::ChaCha20Poly1305 => 32,
        }
    }

    /// Bytes of KEYMAT the suite takes: key ‖ salt (RFC 4106 §8.1, RFC 7634 §2).
    pub const fn keymat_len(self) -> usize {
        self.key_len() + SALT_LEN
    }

    /// IKEv2 transform ID (type 1, ENCR).
    pub const fn transform_id(self) -> u16 {
        match self {
            Suite::Aes128Gcm16 | Suite::Aes256Gcm16 => 20,
            Suite::ChaCha20Poly1305 => 28,
        }
    }

    /// The Key Length attribute in bits, where the transform carries one.
    pub const fn key_length_attr(self) -> Option<u16> {
        match self {
            Suite::Aes128Gcm16 => Some(128),
            Suite::Aes256Gcm16 => Some(256),
            Suite::ChaCha20Poly1305 => None,
        }
    }

    /// Short name used on command lines and in bench output.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm16 => "aes-128-gcm",
            Suite::Aes256Gcm16 => "aes-256-gcm",
            Suite::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Suite::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| UnknownName(s.to_owned()))
    }
}

/// The implementation behind an [`Aead`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// RustCrypto `aes-gcm` and `chacha20poly1305` (pure Rust).
    RustCrypto,
    /// `aws-lc-rs` (AWS-LC assembly; AVX-512 VAES AES-GCM where the CPU has it).
    AwsLc,
}

impl Backend {
    /// Both backends.
    pub const ALL: [Backend; 2] = [Backend::RustCrypto, Backend::AwsLc];

    /// Short name used on command lines and in bench output.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::RustCrypto => "rustcrypto",
            Backend::AwsLc => "aws-lc",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| UnknownName(s.to_owned()))
    }
}

/// A suite or backend name that is not known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName(pub String);

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown name {:?}", self.0)
    }
}

impl std::error::Error for UnknownName {}

/// Errors of the AEAD layer. Deliberately carries no detail about why an open failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// The key has the wrong length for the suite.
    BadKeyLength { expected: usize, got: usize },
    /// The ICV did not verify (or the backend refused the operation).
    Authentication,
    /// An out-of-place operation got input and output buffers of different lengths; nothing
    /// was computed.
    LengthMismatch,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::BadKeyLength { expected, got } => {
                write!(f, "key is {got} bytes, suite needs {expected}")
            }
            CryptoError::Authentication => f.write_str("authentication failed"),
            CryptoError::LengthMismatch => f.write_str("input and output lengths differ"),
        }
    }
}

impl std::error::Error for CryptoError {}

/// A keyed AEAD: the key schedule is expanded once, when the SA is built (off the worker).
pub trait Aead: Send + Sync + fmt::Debug {
    /// The transform this key implements.
    fn suite(&self) -> Suite;
    /// The implementation behind it.
    fn backend(&self) -> Backend;
    /// Encrypts `buf` in place and returns the ICV.
    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; ICV_LEN], CryptoError>;
    /// Verifies `icv` and decrypts `buf` in place. On error `buf` holds unspecified bytes.
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        icv: &[u8; ICV_LEN],
    ) -> Result<(), CryptoError>;
    /// Encrypts `input` into `out` (of the same length, else `LengthMismatch`) in one pass and
    /// returns the ICV; `input` is left as it is. Lets the sender seal straight into a TCP send
    /// buffer.
    fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        out: &mut [u8],
    ) -> Result<[u8; ICV_LEN], CryptoError>;
    /// Verifies `icv` over `input` and decrypts it into `out` (of the same length, else
    /// `LengthMismatch`) in one pass; `input` is left as it is. Lets the receiver decrypt
    /// straight out of a TCP receive buffer into a packet buffer. On error `out` holds
    /// unspecified bytes.
    fn open_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        out: &mut [u8],
        icv: &[u8; ICV_LEN],
    ) -> Result<(), CryptoError>;
}

/// Builds a keyed AEAD for `suite` from a bare cipher key (no salt).
pub fn new_aead(backend: Backend, suite: Suite, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError> {
    if key.len() != suite.key_len() {
        return Err(CryptoError::BadKeyLength {
            expected: suite.key_len(),
            got: key.len(),
        });
    }
    match backend {
        Backend::RustCrypto => rustcrypto::new(suite, key),
        Backend::AwsLc => awslc::new(suite, key),
    }
}

/// KEYMAT for one direction of an ESP SA: cipher key followed by the salt.
/// Zeroized on drop; its `Debug` never shows the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keymat {
    #[zeroize(skip)]
    suite: Suite,
    bytes: Vec<u8>,
}

impl Keymat {
    /// Takes KEYMAT as cut from prf+ (RFC 7296 §2.17): `suite.keymat_len()` bytes, key ‖ salt.
    pub fn new(suite: Suite, keymat: &[u8]) -> Result<Self, CryptoError> {
        if keymat.len() != suite.keymat_len() {
            return Err(CryptoError::BadKeyLength {
                expected: suite.keymat_len(),
                got: keymat.len(),
            });
        }
        Ok(Keymat {
            suite,
            bytes: keymat.to_vec(),
        })
    }

    /// The suite this KEYMAT is for.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The cipher key.
    pub fn key(&self) -> &[u8] {
        self.bytes.get(..self.suite.key_len()).unwrap_or(&[])
    }

    /// The salt (RFC 4106 §4, RFC 7634 §2).
    pub fn salt(&self) -> [u8; SALT_LEN] {
        let mut s = [0u8; SALT_LEN];
        if let Some(tail) = self.bytes.get(self.suite.key_len()..) {
            s.copy_from_slice(tail);
        }
        s
    }

    /// Raw bytes (for keylog output when the operator asks for it).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Expands the key schedule on `backend`. The salt travels separately as a zeroizing copy.
    pub fn build(&self, backend: Backend) -> Result<KeyedAead, CryptoError> {
        Ok(KeyedAead {
            aead: new_aead(backend, self.suite, self.key())?,
            salt: Zeroizing::new(self.salt()),
        })
    }
}

impl fmt::Debug for Keymat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keymat")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// A ready AEAD plus its salt: what an SA holds for one direction.
#[derive(Debug)]
pub struct KeyedAead {
    aead: Box<dyn Aead>,
    salt: Zeroizing<[u8; SALT_LEN]>,
}

impl KeyedAead {
    /// The AEAD.
    pub fn aead(&self) -> &dyn Aead {
        &*self.aead
    }

    /// Nonce = salt ‖ IV (RFC 4106 §4, RFC 7634 §2).
    #[inline]
    pub fn nonce(&self, iv: &[u8; IV_LEN]) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..SALT_LEN].copy_from_slice(&*self.salt);
        n[SALT_LEN..].copy_from_slice(iv);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(suite: Suite) -> Vec<u8> {
        (0..suite.key_len())
            .map(|i| (i as u8).wrapping_mul(13))
            .collect()
    }

    /// The out-of-place operations of both backends give the in-place results (the same
    /// ciphertext and ICV for the same inputs), leave their input alone, and open each other's
    /// output; buffers of different lengths are refused before anything is written.
    #[test]
    fn out_of_place_matches_in_place_on_both_backends() {
        let nonce = [7u8; NONCE_LEN];
        let aad = [1u8, 2, 3, 4, 0, 0, 0, 9];
        let msg: Vec<u8> = (0..1400u32).map(|i| (i * 31) as u8).collect();
        for suite in Suite::ALL {
            let k = key(suite);
            let rc = new_aead(Backend::RustCrypto, suite, &k).expect("rc");
            let lc = new_aead(Backend::AwsLc, suite, &k).expect("lc");
            let mut in_place = msg.clone();
            let tag = rc.seal(&nonce, &aad, &mut in_place).expect("seal");
            for (a, b) in [(&rc, &lc), (&lc, &rc)] {
                let mut ct = vec![0u8; msg.len()];
                assert_eq!(a.seal_into(&nonce, &aad, &msg, &mut ct), Ok(tag));
                assert_eq!(ct, in_place, "{suite} {}", a.backend());
                let mut pt = vec![0u8; msg.len()];
                b.open_into(&nonce, &aad, &ct, &mut pt, &tag).expect("open");
                assert_eq!(pt, msg);
                let mut bad = tag;
                bad[3] ^= 1;
                let before = ct.clone();
                assert_eq!(
                    b.open_into(&nonce, &aad, &ct, &mut pt, &bad),
                    Err(CryptoError::Authentication)
                );
                assert_eq!(ct, before, "the input is never written");
                let mut short = vec![0xeeu8; msg.len() - 1];
                assert_eq!(
                    a.seal_into(&nonce, &aad, &msg, &mut short),
                    Err(CryptoError::LengthMismatch)
                );
                assert_eq!(
                    a.open_into(&nonce, &aad, &ct, &mut short, &tag),
                    Err(CryptoError::LengthMismatch)
                );
                assert!(short.iter().all(|&x| x == 0xee));
            }
        }
    }
}
