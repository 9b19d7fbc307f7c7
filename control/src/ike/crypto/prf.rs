//! The IKEv2 pseudorandom functions (RFC 7296 §2.13, RFC 4868 §2.1.2) and `prf+`.
//!
//! All four PRFs are HMAC (RFC 2104) over SHA-1 or SHA-2. `prf+` is the RFC 7296 §2.13 feedback
//! expansion:
//!
//! ```text
//! prf+ (K,S) = T1 | T2 | T3 | T4 | ...
//! T1 = prf (K, S | 0x01)
//! Tn = prf (K, Tn-1 | S | n)        n <= 255
//! ```

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use zeroize::Zeroizing;

use super::alg::PrfAlg;
use super::secret::SecretBytes;

/// Largest hash output of the supported hashes (SHA-512).
pub(crate) const MAX_HASH_LEN: usize = 64;

/// RFC 7296 §2.13: "The prf+ function is not defined beyond 255 times the size of the prf function
/// output."
pub const PRF_PLUS_MAX_BLOCKS: usize = 255;

/// Errors from the PRF layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrfError {
    /// More than 255 blocks of `prf+` output were requested (RFC 7296 §2.13).
    TooLong {
        /// Octets requested.
        requested: usize,
        /// Largest possible output for this PRF.
        max: usize,
    },
    /// The MAC rejected the key. HMAC accepts keys of any length, so this does not happen with
    /// the supported PRFs; it exists so that no code path has to panic.
    InvalidKey,
}

impl fmt::Display for PrfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { requested, max } => {
                write!(f, "prf+ output of {requested} octets exceeds {max}")
            }
            Self::InvalidKey => f.write_str("PRF key rejected"),
        }
    }
}

impl std::error::Error for PrfError {}

/// The hash functions under the HMACs. SHA-224 is not an IKEv2 PRF; it exists (tests only) to run
/// the ACVP SHA2-224 IKEv2 KDF vector through the same code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashAlg {
    Sha1,
    #[cfg(test)]
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub(crate) const fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            #[cfg(test)]
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

impl PrfAlg {
    pub(crate) const fn hash(self) -> HashAlg {
        match self {
            Self::HmacSha1 => HashAlg::Sha1,
            Self::HmacSha256 => HashAlg::Sha256,
            Self::HmacSha384 => HashAlg::Sha384,
            Self::HmacSha512 => HashAlg::Sha512,
        }
    }

    /// `prf(K, S)` where S is the concatenation of `data` (passed in parts so that secrets such as
    /// g^ir need not be copied into a temporary buffer).
    ///
    /// # Errors
    /// [`PrfError::InvalidKey`] only if the MAC refused the key (not possible for HMAC).
    pub fn prf(self, key: &[u8], data: &[&[u8]]) -> Result<SecretBytes, PrfError> {
        let mut out = SecretBytes::zeroed(self.output_len());
        let mac = KeyedHmac::new(self.hash(), key)?;
        mac.mac_into(data, out.expose_mut());
        Ok(out)
    }

    /// `prf+(K, S)` truncated to `len` octets, S given in parts (RFC 7296 §2.13).
    ///
    /// # Errors
    /// [`PrfError::TooLong`] if `len` needs more than 255 PRF blocks.
    pub fn prf_plus(self, key: &[u8], seed: &[&[u8]], len: usize) -> Result<SecretBytes, PrfError> {
        let mut out = SecretBytes::zeroed(len);
        prf_plus_into(self.hash(), key, seed, out.expose_mut())?;
        Ok(out)
    }

    /// Largest `prf+` output: 255 blocks.
    #[must_use]
    pub const fn prf_plus_max_len(self) -> usize {
        PRF_PLUS_MAX_BLOCKS * self.output_len()
    }
}

/// `prf+` with an explicit hash, filling `out` entirely.
pub(crate) fn prf_plus_into(
    hash: HashAlg,
    key: &[u8],
    seed: &[&[u8]],
    out: &mut [u8],
) -> Result<(), PrfError> {
    let n = hash.output_len();
    let max = PRF_PLUS_MAX_BLOCKS * n;
    if out.len() > max {
        return Err(PrfError::TooLong {
            requested: out.len(),
            max,
        });
    }
    let mac = KeyedHmac::new(hash, key)?;
    let mut t = Zeroizing::new([0u8; MAX_HASH_LEN]);
    let mut t_len = 0usize;
    for (i, chunk) in out.chunks_mut(n).enumerate() {
        // i < 255 by the length check above, so the counter 1..=255 fits in one octet.
        let counter = u8::try_from(i + 1).map_err(|_| PrfError::TooLong {
            requested: i * n,
            max,
        })?;
        let mut m = mac.clone();
        // T(n) = prf(K, T(n-1) | S | n); T(0) is empty.
        m.update(&t[..t_len]);
        for part in seed {
            m.update(part);
        }
        m.update(&[counter]);
        t_len = m.finalize_into(&mut t[..]);
        chunk.copy_from_slice(&t[..chunk.len()]);
    }
    Ok(())
}

/// An HMAC keyed once and cloned per message (the keyed inner/outer state is the expensive part).
#[derive(Clone)]
pub(crate) enum KeyedHmac {
    Sha1(Hmac<sha1::Sha1>),
    #[cfg(test)]
    Sha224(Hmac<sha2::Sha224>),
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
}

impl fmt::Debug for KeyedHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Sha1(_) => "HMAC-SHA-1",
            #[cfg(test)]
            Self::Sha224(_) => "HMAC-SHA-224",
            Self::Sha256(_) => "HMAC-SHA-256",
            Self::Sha384(_) => "HMAC-SHA-384",
            Self::Sha512(_) => "HMAC-SHA-512",
        };
        write!(f, "KeyedHmac({name}, ..)")
    }
}

impl KeyedHmac {
    pub(crate) fn new(hash: HashAlg, key: &[u8]) -> Result<Self, PrfError> {
        let e = |_| PrfError::InvalidKey;
        Ok(match hash {
            HashAlg::Sha1 => Self::Sha1(Hmac::new_from_slice(key).map_err(e)?),
            #[cfg(test)]
            HashAlg::Sha224 => Self::Sha224(Hmac::new_from_slice(key).map_err(e)?),
            HashAlg::Sha256 => Self::Sha256(Hmac::new_from_slice(key).map_err(e)?),
            HashAlg::Sha384 => Self::Sha384(Hmac::new_from_slice(key).map_err(e)?),
            HashAlg::Sha512 => Self::Sha512(Hmac::new_from_slice(key).map_err(e)?),
        })
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(m) => m.update(data),
            #[cfg(test)]
            Self::Sha224(m) => m.update(data),
            Self::Sha256(m) => m.update(data),
            Self::Sha384(m) => m.update(data),
            Self::Sha512(m) => m.update(data),
        }
    }

    /// Writes the full MAC to the front of `out` (at least [`MAX_HASH_LEN`] long, or exactly the
    /// output length) and returns its length.
    pub(crate) fn finalize_into(self, out: &mut [u8]) -> usize {
        fn put(out: &mut [u8], tag: &[u8]) -> usize {
            let n = tag.len().min(out.len());
            out[..n].copy_from_slice(&tag[..n]);
            n
        }
        match self {
            Self::Sha1(m) => put(out, &m.finalize().into_bytes()),
            #[cfg(test)]
            Self::Sha224(m) => put(out, &m.finalize().into_bytes()),
            Self::Sha256(m) => put(out, &m.finalize().into_bytes()),
            Self::Sha384(m) => put(out, &m.finalize().into_bytes()),
            Self::Sha512(m) => put(out, &m.finalize().into_bytes()),
        }
    }

    /// MAC of the concatenation of `data`, written to the front of `out`.
    pub(crate) fn mac_into(&self, data: &[&[u8]], out: &mut [u8]) -> usize {
        let mut m = self.clone();
        for part in data {
            m.update(part);
        }
        m.finalize_into(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::{hex, load_json};

    #[test]
    fn rfc4868_prf_vectors() {
        let v = load_json("prf-integ-rfc4868-rfc4434.json");
        let cases = v["rfc4868_prf"].as_array().unwrap();
        let mut n = 0;
        for c in cases {
            let key = hex(c["key"].as_str().unwrap());
            let data = hex(c["data"].as_str().unwrap());
            for (alg, field) in [
                (PrfAlg::HmacSha256, "hmac_sha256_prf"),
                (PrfAlg::HmacSha384, "hmac_sha384_prf"),
                (PrfAlg::HmacSha512, "hmac_sha512_prf"),
            ] {
                let want = hex(c[field].as_str().unwrap());
                let got = alg.prf(&key, &[&data]).unwrap();
                assert_eq!(got.expose(), &want[..], "{} {field}", c["name"]);
                // Splitting the data anywhere gives the same MAC.
                let (a, b) = data.split_at(data.len() / 2);
                assert_eq!(alg.prf(&key, &[a, b]).unwrap().expose(), &want[..]);
                n += 1;
            }
        }
        assert_eq!(n, 18);
    }

    #[test]
    fn hmac_sha1_rfc2202_case_1_and_2() {
        // RFC 2202 §3 test cases 1 and 2 (HMAC-SHA-1); PRF_HMAC_SHA1 is plain HMAC-SHA-1.
        let got = PrfAlg::HmacSha1.prf(&[0x0b; 20], &[b"Hi There"]).unwrap();
        assert_eq!(
            got.expose(),
            &hex("b617318655057264e28bc0b6fb378c8ef146be00")[..]
        );
        let got = PrfAlg::HmacSha1
            .prf(b"Jefe", &[b"what do ya want for nothing?"])
            .unwrap();
        assert_eq!(
            got.expose(),
            &hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")[..]
        );
    }

    /// prf+ computed directly from the RFC 7296 §2.13 definition.
    fn prf_plus_reference(alg: PrfAlg, key: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut t: Vec<u8> = Vec::new();
        let mut n = 1u8;
        while out.len() < len {
            let mut input = t.clone();
            input.extend_from_slice(seed);
            input.push(n);
            t = alg.prf(key, &[&input]).unwrap().expose().to_vec();
            out.extend_from_slice(&t);
            n += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn prf_plus_matches_definition_and_prefixes() {
        for alg in [
            PrfAlg::HmacSha1,
            PrfAlg::HmacSha256,
            PrfAlg::HmacSha384,
            PrfAlg::HmacSha512,
        ] {
            let key = b"key material";
            let seed = b"nonce-i nonce-r spi-i spi-r";
            let full = alg.prf_plus(key, &[seed], 300).unwrap();
            assert_eq!(full.expose(), &prf_plus_reference(alg, key, seed, 300)[..]);
            // Shorter outputs are prefixes; T1 = prf(K, S | 0x01).
            let one = alg.prf_plus(key, &[&seed[..5], &seed[5..]], 7).unwrap();
            assert_eq!(one.expose(), &full.expose()[..7]);
            let t1 = alg.prf(key, &[seed, &[1]]).unwrap();
            assert_eq!(&full.expose()[..alg.output_len()], t1.expose());
            assert!(alg.prf_plus(key, &[seed], 0).unwrap().is_empty());
        }
    }

    #[test]
    fn prf_plus_limit_is_255_blocks() {
        let alg = PrfAlg::HmacSha256;
        let max = alg.prf_plus_max_len();
        assert_eq!(max, 255 * 32);
        let out = alg.prf_plus(b"k", &[b"s"], max).unwrap();
        // The last block is T255, computed with counter octet 0xff.
        let t254 = &out.expose()[253 * 32..254 * 32];
        let t255 = alg.prf(b"k", &[t254, b"s", &[0xff]]).unwrap();
        assert_eq!(&out.expose()[254 * 32..], t255.expose());
        assert_eq!(
            alg.prf_plus(b"k", &[b"s"], max + 1),
            Err(PrfError::TooLong {
                requested: max + 1,
                max
            })
        );
    }
}
