//! Owned secret byte strings: zeroized on drop, redacted in `Debug`, compared in constant time.
//!
//! Used for everything RFC 7296 §2.13–2.18 derives from a Diffie-Hellman secret: g^ir, SKEYSEED,
//! the seven SK_* keys and Child SA KEYMAT.

use core::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A heap-allocated secret. The bytes are wiped when the value is dropped; `Debug` prints only the
/// length.
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes` (no copy is left behind).
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret. The caller remains responsible for wiping its own copy.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// A zero-filled secret of `len` bytes, to be written in place.
    #[must_use]
    pub(crate) fn zeroed(len: usize) -> Self {
        Self(Zeroizing::new(vec![0u8; len]))
    }

    /// The secret bytes. Named so that every use is visible in review.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Length in bytes (not secret).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` for a zero-length secret (e.g. SK_ai with an AEAD cipher, RFC 5282 §7.1).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.0.len())
    }
}

impl ConstantTimeEq for SecretBytes {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // Lengths are public; `subtle` compares slices of different length as unequal.
        self.expose().ct_eq(other.expose())
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for SecretBytes {}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let d = format!("{s:?}");
        assert_eq!(d, "SecretBytes([REDACTED; 4])");
        assert!(!d.to_lowercase().contains("dead"));
    }

    #[test]
    fn equality_is_by_value() {
        let a = SecretBytes::from_slice(b"abc");
        assert_eq!(a, SecretBytes::new(b"abc".to_vec()));
        assert_ne!(a, SecretBytes::from_slice(b"abd"));
        assert_ne!(a, SecretBytes::from_slice(b"ab"));
    }

    #[test]
    fn zeroize_clears() {
        let mut a = SecretBytes::from_slice(&[1, 2, 3]);
        a.zeroize();
        // `Vec`'s zeroize wipes the contents and then truncates.
        assert!(a.is_empty());
    }
}
