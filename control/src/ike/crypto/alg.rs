//! Transform IDs (RFC 7296 §3.3.2, IANA "IKEv2 Transform Attribute" registries) for the algorithms
//! this crate implements, with the key and block lengths each one implies.
//!
//! A negotiated proposal maps to an [`IkeSuite`]; the session then asks the suite for key lengths
//! (RFC 7296 §2.14) and builds the SK payload protection (RFC 7296 §3.14, RFC 5282, RFC 7634).

use core::fmt;

/// Transform Type 1 (ENCR) as negotiated, including the Key Length attribute (RFC 7296 §3.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// ENCR_AES_CBC (12) with a 128-bit key (RFC 3602, RFC 7296 §3.14).
    AesCbc128,
    /// ENCR_AES_CBC (12) with a 256-bit key.
    AesCbc256,
    /// ENCR_AES_GCM_16 (20) with a 128-bit key (RFC 5282, 16-octet ICV).
    AesGcm16_128,
    /// ENCR_AES_GCM_16 (20) with a 256-bit key.
    AesGcm16_256,
    /// ENCR_CHACHA20_POLY1305 (28), RFC 7634.
    ChaCha20Poly1305,
}

/// Transform Type 2 (PRF), RFC 7296 §3.3.2 and RFC 4868 §4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrfAlg {
    /// PRF_HMAC_SHA1 (2), RFC 2104.
    HmacSha1,
    /// PRF_HMAC_SHA2_256 (5), RFC 4868.
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (6), RFC 4868.
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (7), RFC 4868.
    HmacSha512,
}

/// Transform Type 3 (INTEG), RFC 4868 §2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    /// AUTH_HMAC_SHA2_256_128 (12).
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (13).
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (14).
    HmacSha512_256,
}

/// Transform Type 4 (Key Exchange Method / D-H group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 2048-bit MODP group (14), RFC 3526 §3.
    Modp2048,
    /// 256-bit random ECP group (19), NIST P-256, RFC 5903.
    Ecp256,
    /// 384-bit random ECP group (20), NIST P-384, RFC 5903.
    Ecp384,
    /// Curve25519 (31), RFC 8031.
    Curve25519,
}

/// Transform Type values (RFC 7296 §3.3.2), used in [`AlgError`].
pub mod transform_type {
    /// Encryption Algorithm (ENCR).
    pub const ENCR: u8 = 1;
    /// Pseudorandom Function (PRF).
    pub const PRF: u8 = 2;
    /// Integrity Algorithm (INTEG).
    pub const INTEG: u8 = 3;
    /// Diffie-Hellman group (D-H), renamed Key Exchange Method by RFC 9370.
    pub const DH: u8 = 4;
}

/// A transform or combination of transforms this implementation cannot use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgError {
    /// Unknown or unimplemented transform ID for the given transform type.
    Unsupported {
        /// One of [`transform_type`].
        transform_type: u8,
        /// The transform ID.
        id: u16,
    },
    /// The Key Length attribute is missing, present where forbidden, or has an unsupported value
    /// (RFC 7296 §3.3.5, RFC 5282 §7.3).
    KeyLength {
        /// ENCR transform ID.
        id: u16,
        /// The attribute value received, if any.
        key_len: Option<u16>,
    },
    /// An AEAD cipher was combined with an integrity algorithm (RFC 5282 §8, RFC 7634 §4).
    IntegWithAead,
    /// A non-AEAD cipher needs an integrity algorithm (RFC 7296 §3.3.3).
    MissingInteg,
}

impl fmt::Display for AlgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported { transform_type, id } => {
                write!(f, "unsupported transform type {transform_type} id {id}")
            }
            Self::KeyLength {
                id,
                key_len: Some(k),
            } => {
                write!(f, "ENCR {id}: unsupported Key Length {k}")
            }
            Self::KeyLength { id, key_len: None } => {
                write!(f, "ENCR {id}: Key Length attribute required")
            }
            Self::IntegWithAead => f.write_str("an AEAD cipher must not be combined with INTEG"),
            Self::MissingInteg => f.write_str("a non-AEAD cipher requires an INTEG transform"),
        }
    }
}

impl std::error::Error for AlgError {}

impl EncrAlg {
    /// ENCR_AES_CBC.
    pub const ID_AES_CBC: u16 = 12;
    /// ENCR_AES_GCM_16.
    pub const ID_AES_GCM_16: u16 = 20;
    /// ENCR_CHACHA20_POLY1305.
    pub const ID_CHACHA20_POLY1305: u16 = 28;

    /// Maps a negotiated ENCR transform and its Key Length attribute (in bits).
    ///
    /// AES requires the attribute (RFC 7296 §3.3.5, RFC 5282 §7.3); ChaCha20-Poly1305 has a single
    /// 256-bit key (RFC 7634 §2) and "the Key Length attribute MUST NOT be used with transforms that
    /// use a fixed-length key" (RFC 7296 §3.3.5). 192-bit AES is not implemented.
    ///
    /// # Errors
    /// [`AlgError::Unsupported`] for other IDs, [`AlgError::KeyLength`] for a bad attribute.
    pub fn from_transform(id: u16, key_len_bits: Option<u16>) -> Result<Self, AlgError> {
        match (id, key_len_bits) {
            (Self::ID_AES_CBC, Some(128)) => Ok(Self::AesCbc128),
            (Self::ID_AES_CBC, Some(256)) => Ok(Self::AesCbc256),
            (Self::ID_AES_GCM_16, Some(128)) => Ok(Self::AesGcm16_128),
            (Self::ID_AES_GCM_16, Some(256)) => Ok(Self::AesGcm16_256),
            (Self::ID_CHACHA20_POLY1305, None) => Ok(Self::ChaCha20Poly1305),
            (Self::ID_AES_CBC | Self::ID_AES_GCM_16 | Self::ID_CHACHA20_POLY1305, k) => {
                Err(AlgError::KeyLength { id, key_len: k })
            }
            _ => Err(AlgError::Unsupported {
                transform_type: transform_type::ENCR,
                id,
            }),
        }
    }

    /// Transform ID.
    #[must_use]
    pub const fn transform_id(self) -> u16 {
        match self {
            Self::AesCbc128 | Self::AesCbc256 => Self::ID_AES_CBC,
            Self::AesGcm16_128 | Self::AesGcm16_256 => Self::ID_AES_GCM_16,
            Self::ChaCha20Poly1305 => Self::ID_CHACHA20_POLY1305,
        }
    }

    /// Key Length attribute value (bits) to put in a proposal, `None` if it must be absent.
    #[must_use]
    pub const fn key_length_attr(self) -> Option<u16> {
        match self {
            Self::AesCbc128 | Self::AesGcm16_128 => Some(128),
            Self::AesCbc256 | Self::AesGcm16_256 => Some(256),
            Self::ChaCha20Poly1305 => None,
        }
    }

    /// `true` for combined-mode (AEAD) ciphers (RFC 5282).
    #[must_use]
    pub const fn is_aead(self) -> bool {
        !matches!(self, Self::AesCbc128 | Self::AesCbc256)
    }

    /// Cipher key length in octets, without salt.
    #[must_use]
    pub const fn key_len(self) -> usize {
        match self {
            Self::AesCbc128 | Self::AesGcm16_128 => 16,
            Self::AesCbc256 | Self::AesGcm16_256 | Self::ChaCha20Poly1305 => 32,
        }
    }

    /// Salt octets appended to the key in the keying material: 4 for AES-GCM (RFC 5282 §7.1,
    /// RFC 4106 §8.1) and ChaCha20-Poly1305 (RFC 7634 §3), 0 for CBC.
    #[must_use]
    pub const fn salt_len(self) -> usize {
        if self.is_aead() { 4 } else { 0 }
    }

    /// Length of SK_ei / SK_er (and of an ESP encryption key taken from KEYMAT): key ‖ salt.
    #[must_use]
    pub const fn keymat_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// Length of the IV in the Encrypted payload: the block size for CBC (RFC 7296 §3.14), 8 for
    /// the AEAD ciphers (RFC 5282 §3.1, RFC 7634 §2).
    #[must_use]
    pub const fn iv_len(self) -> usize {
        if self.is_aead() { 8 } else { 16 }
    }

    /// Alignment the plaintext (payloads ‖ padding ‖ pad length) must have: the AES block for CBC,
    /// none for AEAD (RFC 5282 §3).
    #[must_use]
    pub const fn block_len(self) -> usize {
        if self.is_aead() { 1 } else { 16 }
    }

    /// Authentication tag carried inside the ciphertext of an AEAD (16 octets for GCM-16 and
    /// Poly1305), 0 for CBC (whose checksum length comes from [`IntegAlg::icv_len`]).
    #[must_use]
    pub const fn tag_len(self) -> usize {
        if self.is_aead() { 16 } else { 0 }
    }
}

impl PrfAlg {
    /// Maps a PRF transform ID.
    ///
    /// # Errors
    /// [`AlgError::Unsupported`] for IDs other than 2, 5, 6, 7.
    pub fn from_transform(id: u16) -> Result<Self, AlgError> {
        match id {
            2 => Ok(Self::HmacSha1),
            5 => Ok(Self::HmacSha256),
            6 => Ok(Self::HmacSha384),
            7 => Ok(Self::HmacSha512),
            _ => Err(AlgError::Unsupported {
                transform_type: transform_type::PRF,
                id,
            }),
        }
    }

    /// Transform ID.
    #[must_use]
    pub const fn transform_id(self) -> u16 {
        match self {
            Self::HmacSha1 => 2,
            Self::HmacSha256 => 5,
            Self::HmacSha384 => 6,
            Self::HmacSha512 => 7,
        }
    }

    /// PRF output length in octets.
    #[must_use]
    pub const fn output_len(self) -> usize {
        match self {
            Self::HmacSha1 => 20,
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }

    /// Preferred key length, the length of SK_d, SK_pi and SK_pr: for HMAC PRFs the hash output
    /// length (RFC 7296 §2.13, RFC 4868 §2.1.2).
    #[must_use]
    pub const fn key_len(self) -> usize {
        self.output_len()
    }
}

impl IntegAlg {
    /// Maps an INTEG transform ID. `NONE` (0) is not an algorithm: use `None` in [`IkeSuite`].
    ///
    /// # Errors
    /// [`AlgError::Unsupported`] for IDs other than 12, 13, 14.
    pub fn from_transform(id: u16) -> Result<Self, AlgError> {
        match id {
            12 => Ok(Self::HmacSha256_128),
            13 => Ok(Self::HmacSha384_192),
            14 => Ok(Self::HmacSha512_256),
            _ => Err(AlgError::Unsupported {
                transform_type: transform_type::INTEG,
                id,
            }),
        }
    }

    /// Transform ID.
    #[must_use]
    pub const fn transform_id(self) -> u16 {
        match self {
            Self::HmacSha256_128 => 12,
            Self::HmacSha384_192 => 13,
            Self::HmacSha512_256 => 14,
        }
    }

    /// Key length in octets (SK_ai / SK_ar): the hash output length, RFC 4868 §2.1.1.
    #[must_use]
    pub const fn key_len(self) -> usize {
        match self {
            Self::HmacSha256_128 => 32,
            Self::HmacSha384_192 => 48,
            Self::HmacSha512_256 => 64,
        }
    }

    /// Truncated ICV length in octets: half the hash output, RFC 4868 §2.3.
    #[must_use]
    pub const fn icv_len(self) -> usize {
        self.key_len() / 2
    }
}

impl DhGroup {
    /// Maps a D-H transform ID.
    ///
    /// # Errors
    /// [`AlgError::Unsupported`] for IDs other than 14, 19, 20, 31.
    pub fn from_transform(id: u16) -> Result<Self, AlgError> {
        match id {
            14 => Ok(Self::Modp2048),
            19 => Ok(Self::Ecp256),
            20 => Ok(Self::Ecp384),
            31 => Ok(Self::Curve25519),
            _ => Err(AlgError::Unsupported {
                transform_type: transform_type::DH,
                id,
            }),
        }
    }

    /// Transform ID (also the D-H Group Num of the KE payload, RFC 7296 §3.4).
    #[must_use]
    pub const fn transform_id(self) -> u16 {
        match self {
            Self::Modp2048 => 14,
            Self::Ecp256 => 19,
            Self::Ecp384 => 20,
            Self::Curve25519 => 31,
        }
    }

    /// Length of the Key Exchange Data: the modulus length for MODP (RFC 7296 §3.4), x ‖ y for ECP
    /// (RFC 5903 §7), 32 octets for Curve25519 (RFC 8031 §3.1).
    #[must_use]
    pub const fn ke_data_len(self) -> usize {
        match self {
            Self::Modp2048 => 256,
            Self::Ecp256 => 64,
            Self::Ecp384 => 96,
            Self::Curve25519 => 32,
        }
    }

    /// Length of the shared secret g^ir: the modulus length for MODP, the x coordinate for ECP
    /// (RFC 5903 §9), 32 octets for Curve25519.
    #[must_use]
    pub const fn shared_secret_len(self) -> usize {
        match self {
            Self::Modp2048 => 256,
            Self::Ecp256 | Self::Curve25519 => 32,
            Self::Ecp384 => 48,
        }
    }
}

/// An ESP transform of a Child SA (Transform Type 1, RFC 7296 §3.3.2): only combined-mode
/// ciphers, so an ESP proposal carries no INTEG transform (RFC 4106 §8.1, RFC 7634 §4). The
/// protocol has its own type so that it does not depend on a data plane; the data plane maps it
/// to its AEAD implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EspSuite {
    /// ENCR_AES_GCM_16 (20) with a 128-bit key, 16-octet ICV (RFC 4106).
    AesGcm16_128,
    /// ENCR_AES_GCM_16 (20) with a 256-bit key, 16-octet ICV (RFC 4106).
    AesGcm16_256,
    /// ENCR_CHACHA20_POLY1305 (28), RFC 7634.
    ChaCha20Poly1305,
}

impl EspSuite {
    /// All ESP suites, in a stable order.
    pub const ALL: [EspSuite; 3] = [
        EspSuite::AesGcm16_128,
        EspSuite::AesGcm16_256,
        EspSuite::ChaCha20Poly1305,
    ];

    /// The same cipher as an IKE ENCR transform: ESP and the SK payload share transform IDs,
    /// Key Length attributes and the key ‖ salt KEYMAT layout (RFC 4106 §8.1 / RFC 5282 §7.1,
    /// RFC 7634 §2 / §3).
    #[must_use]
    pub const fn encr(self) -> EncrAlg {
        match self {
            Self::AesGcm16_128 => EncrAlg::AesGcm16_128,
            Self::AesGcm16_256 => EncrAlg::AesGcm16_256,
            Self::ChaCha20Poly1305 => EncrAlg::ChaCha20Poly1305,
        }
    }

    /// Transform ID (RFC 7296 §3.3.2).
    #[must_use]
    pub const fn transform_id(self) -> u16 {
        self.encr().transform_id()
    }

    /// Key Length attribute value (bits) to put in a proposal, `None` if it must be absent
    /// (RFC 7296 §3.3.5: ChaCha20-Poly1305 has a fixed key).
    #[must_use]
    pub const fn key_length_attr(self) -> Option<u16> {
        self.encr().key_length_attr()
    }

    /// Cipher key length in octets, without salt.
    #[must_use]
    pub const fn key_len(self) -> usize {
        self.encr().key_len()
    }

    /// Octets of KEYMAT one ESP SA takes (RFC 7296 §2.17): key ‖ 4-octet salt (RFC 4106 §8.1,
    /// RFC 7634 §2).
    #[must_use]
    pub const fn keymat_len(self) -> usize {
        self.encr().keymat_len()
    }
}

/// The algorithms of one IKE SA, as negotiated in IKE_SA_INIT (RFC 7296 §2.7, §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    encr: EncrAlg,
    prf: PrfAlg,
    integ: Option<IntegAlg>,
    dh: DhGroup,
}

impl IkeSuite {
    /// Checks the combination: AEAD ciphers take no INTEG transform (RFC 5282 §8, RFC 7634 §4),
    /// CBC needs one (RFC 7296 §3.3.3).
    ///
    /// # Errors
    /// [`AlgError::IntegWithAead`] or [`AlgError::MissingInteg`].
    pub fn new(
        encr: EncrAlg,
        prf: PrfAlg,
        integ: Option<IntegAlg>,
        dh: DhGroup,
    ) -> Result<Self, AlgError> {
        match (encr.is_aead(), integ) {
            (true, Some(_)) => Err(AlgError::IntegWithAead),
            (false, None) => Err(AlgError::MissingInteg),
            _ => Ok(Self {
                encr,
                prf,
                integ,
                dh,
            }),
        }
    }

    /// Encryption algorithm.
    #[must_use]
    pub const fn encr(&self) -> EncrAlg {
        self.encr
    }

    /// Pseudorandom function.
    #[must_use]
    pub const fn prf(&self) -> PrfAlg {
        self.prf
    }

    /// Integrity algorithm (`None` with an AEAD cipher).
    #[must_use]
    pub const fn integ(&self) -> Option<IntegAlg> {
        self.integ
    }

    /// Key exchange group.
    #[must_use]
    pub const fn dh(&self) -> DhGroup {
        self.dh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encr_mapping_round_trips() {
        for e in [
            EncrAlg::AesCbc128,
            EncrAlg::AesCbc256,
            EncrAlg::AesGcm16_128,
            EncrAlg::AesGcm16_256,
            EncrAlg::ChaCha20Poly1305,
        ] {
            assert_eq!(
                EncrAlg::from_transform(e.transform_id(), e.key_length_attr()),
                Ok(e)
            );
        }
        assert_eq!(
            EncrAlg::from_transform(12, None),
            Err(AlgError::KeyLength {
                id: 12,
                key_len: None
            })
        );
        assert!(EncrAlg::from_transform(20, Some(192)).is_err());
        assert!(EncrAlg::from_transform(28, Some(256)).is_err());
        assert!(EncrAlg::from_transform(3, None).is_err());
    }

    #[test]
    fn key_lengths() {
        // RFC 5282 §7.1: 20 octets for AES-GCM-128 (16 + 4 salt), 36 for 256.
        assert_eq!(EncrAlg::AesGcm16_128.keymat_len(), 20);
        assert_eq!(EncrAlg::AesGcm16_256.keymat_len(), 36);
        // RFC 7634 §3: 36 octets.
        assert_eq!(EncrAlg::ChaCha20Poly1305.keymat_len(), 36);
        assert_eq!(EncrAlg::AesCbc256.keymat_len(), 32);
        assert_eq!(IntegAlg::HmacSha384_192.icv_len(), 24);
        assert_eq!(PrfAlg::HmacSha1.key_len(), 20);
    }

    #[test]
    fn esp_suites() {
        // RFC 4106 §8.1: 16 or 32 octets of key and 4 of salt; RFC 7634 §2: 32 + 4.
        let lens: Vec<usize> = EspSuite::ALL.iter().map(|s| s.keymat_len()).collect();
        assert_eq!(lens, [20, 36, 36]);
        assert_eq!(EspSuite::AesGcm16_128.key_len(), 16);
        // RFC 7296 §3.3.2: ENCR_AES_GCM_16 is 20, ENCR_CHACHA20_POLY1305 28.
        let ids: Vec<(u16, Option<u16>)> = EspSuite::ALL
            .iter()
            .map(|s| (s.transform_id(), s.key_length_attr()))
            .collect();
        assert_eq!(ids, [(20, Some(128)), (20, Some(256)), (28, None)]);
    }

    #[test]
    fn ids_round_trip() {
        for id in [2, 5, 6, 7] {
            assert_eq!(PrfAlg::from_transform(id).map(PrfAlg::transform_id), Ok(id));
        }
        for id in [12, 13, 14] {
            assert_eq!(
                IntegAlg::from_transform(id).map(IntegAlg::transform_id),
                Ok(id)
            );
        }
        for id in [14, 19, 20, 31] {
            assert_eq!(
                DhGroup::from_transform(id).map(DhGroup::transform_id),
                Ok(id)
            );
        }
        assert!(PrfAlg::from_transform(4).is_err());
        assert!(IntegAlg::from_transform(2).is_err());
        assert!(DhGroup::from_transform(2).is_err());
    }

    #[test]
    fn suite_rules() {
        let p = PrfAlg::HmacSha256;
        let d = DhGroup::Curve25519;
        assert!(IkeSuite::new(EncrAlg::AesGcm16_256, p, None, d).is_ok());
        assert_eq!(
            IkeSuite::new(EncrAlg::AesGcm16_256, p, Some(IntegAlg::HmacSha256_128), d),
            Err(AlgError::IntegWithAead)
        );
        assert_eq!(
            IkeSuite::new(EncrAlg::AesCbc128, p, None, d),
            Err(AlgError::MissingInteg)
        );
    }
}
