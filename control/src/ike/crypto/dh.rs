//! Key exchange for the IKE_SA_INIT and CREATE_CHILD_SA KE payloads (RFC 7296 §1.2, §3.4).
//!
//! | group | method | KE data | shared secret g^ir | peer validation |
//! |---|---|---|---|---|
//! | 14 | MODP-2048, g = 2 (RFC 3526 §3) | y, 256 octets big endian | 256 octets, left-padded | 1 < y < p−1 (RFC 6989 §2.1) |
//! | 19 | ECP P-256 (RFC 5903) | x ‖ y, 64 octets, no 0x04 (§7) | x only, 32 octets (§9) | point on curve (RFC 6989 §2.3) |
//! | 20 | ECP P-384 (RFC 5903) | x ‖ y, 96 octets | x only, 48 octets | point on curve |
//! | 31 | X25519 (RFC 8031) | 32 octets (§3.1) | 32 octets | not all zero (§2) |
//!
//! Private values are generated fresh for every exchange (RFC 6989 §2.4 allows reuse only with the
//! checks above; we never reuse) and are wiped on drop.
//!
//! X25519 and the ECP groups run on AWS-LC (`aws-lc-rs`'s agreement: ECP keys in [1, n−1], the
//! peer's point decoded and checked to lie on the curve before use; X25519 fails on an all-zero
//! result), several times faster here than the pure-Rust curves; MODP-2048 stays in Rust.

use core::fmt;

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, UnparsedPublicKey, X25519};
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, U512, U2048};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::alg::DhGroup;
use super::secret::SecretBytes;

/// Errors from key generation and agreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhError {
    /// The peer's Key Exchange Data has the wrong length for the group (RFC 7296 §3.4).
    BadLength {
        /// Length the group requires.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// The peer's public value is not a valid group element: an ECP point not on the curve
    /// (RFC 6989 §2.3), a MODP value outside 1 < y < p−1 (RFC 6989 §2.1).
    InvalidPublicValue,
    /// The computed shared secret is degenerate: all zero for X25519 (RFC 8031 §2), 1 or p−1 for
    /// MODP.
    DegenerateSharedSecret,
    /// The operating system's random number generator failed.
    Rng,
}

impl fmt::Display for DhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLength { expected, got } => {
                write!(f, "KE data of {got} octets, group needs {expected}")
            }
            Self::InvalidPublicValue => f.write_str("peer public value is not in the group"),
            Self::DegenerateSharedSecret => f.write_str("degenerate D-H shared secret"),
            Self::Rng => f.write_str("random number generator failure"),
        }
    }
}

impl std::error::Error for DhError {}

/// The shared secret g^ir as the octet string IKEv2 feeds to the PRF (RFC 7296 §2.14: big endian,
/// padded to the modulus length for MODP). Wiped on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(SecretBytes);

impl SharedSecret {
    /// The g^ir octets.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        self.0.expose()
    }

    /// Length in octets.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a secret produced by [`KeyExchange::agree`].
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSecret([REDACTED; {}])", self.0.len())
    }
}

/// RFC 3526 §3, the 2048-bit MODP group (group 14): p = 2^2048 − 2^1984 − 1 + 2^64 ·
/// ([2^1918 π] + 124476), generator 2. Checked in the tests against an independent computation of
/// this formula (testdata/modp2048-kat.json) and for safe-primality properties.
const MODP2048_P_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

const MODP2048_P: Odd<U2048> = Odd::<U2048>::from_be_hex(MODP2048_P_HEX);

/// p − 1, the upper bound (exclusive) for peer public values.
const MODP2048_P_MINUS_1: U2048 = MODP2048_P.as_ref().wrapping_sub(&U2048::ONE);

/// Montgomery parameters for p, computed at compile time.
const MODP2048_PARAMS: FixedMontyParams<{ U2048::LIMBS }> = FixedMontyParams::new(MODP2048_P);

/// Length of the private exponent for group 14. RFC 3526 §8 estimates 110–160 bits of strength
/// for this group and advises an exponent of at least twice that; we use 512 bits (≥ 2 · 256).
const MODP2048_EXPONENT_BITS: u32 = 512;
// The exponent's type is what gives it that length.
const _: () = assert!(U512::BITS == MODP2048_EXPONENT_BITS);

enum Private {
    /// X25519; AWS-LC frees (and clears) the key on drop.
    Curve25519(agreement::PrivateKey),
    /// P-256 or P-384; AWS-LC frees (and clears) the key on drop.
    Ecp(agreement::PrivateKey),
    /// Exponent x; the public value is 2^x mod p.
    Modp2048(Zeroizing<U512>),
}

/// An ephemeral key-exchange private value of one group. Wiped on drop (AWS-LC clears its keys
/// when freed, the MODP exponent is held in [`Zeroizing`]); `Debug` prints only the group.
pub struct KeyExchange {
    group: DhGroup,
    private: Private,
    public: Vec<u8>,
}

impl fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyExchange")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn random_bytes(buf: &mut [u8]) -> Result<(), DhError> {
    crate::rng::fill(buf).map_err(|_| DhError::Rng)
}

/// Seeds AWS-LC's random generator now: its first use in a process takes tens of milliseconds
/// (entropy gathering), which would otherwise land on the first handshake. Failures surface
/// again, as [`DhError::Rng`], when a key is generated.
pub fn warm_up() {
    let mut b = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut b);
}

impl KeyExchange {
    /// Generates a fresh private value and returns it with the public Key Exchange Data to send.
    ///
    /// # Errors
    /// [`DhError::Rng`] if the system RNG fails.
    pub fn generate(group: DhGroup) -> Result<(Self, Vec<u8>), DhError> {
        #[cfg(feature = "fuzzing")]
        if crate::rng::deterministic() {
            return Self::generate_seeded(group);
        }
        let private = match group {
            // RFC 8031 §2: 32 random octets; X25519 clamps them (RFC 7748 §5).
            DhGroup::Curve25519 => Private::Curve25519(
                agreement::PrivateKey::generate(&X25519).map_err(|_| DhError::Rng)?,
            ),
            DhGroup::Ecp256 | DhGroup::Ecp384 => Private::Ecp(
                agreement::PrivateKey::generate(ecdh(group)).map_err(|_| DhError::Rng)?,
            ),
            DhGroup::Modp2048 => {
                let mut bytes = Zeroizing::new([0u8; 64]);
                let mut x = Zeroizing::new(U512::ZERO);
                // An exponent below 2 would make the public value 1 or 2 (probability 2^-511).
                loop {
                    random_bytes(&mut bytes[..])?;
                    *x = U512::from_be_slice(&bytes[..]);
                    if *x > U512::ONE {
                        break;
                    }
                }
                Private::Modp2048(x)
            }
        };
        let public = public_value(&private)?;
        let kx = Self {
            group,
            private,
            public: public.clone(),
        };
        Ok((kx, public))
    }

    /// Fuzzing only: a private value from the thread's seeded generator (AWS-LC draws its
    /// own randomness, which no seed reaches).
    #[cfg(feature = "fuzzing")]
    fn generate_seeded(group: DhGroup) -> Result<(Self, Vec<u8>), DhError> {
        let len = match group {
            DhGroup::Ecp384 => 48,
            DhGroup::Modp2048 => 64,
            _ => 32,
        };
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        // An ECP scalar at or above the group order is refused: draw again (rare).
        for _ in 0..16 {
            random_bytes(&mut bytes)?;
            if let Some(kx) = Self::from_private_bytes(group, &bytes) {
                let public = kx.public.clone();
                return Ok((kx, public));
            }
        }
        Err(DhError::Rng)
    }

    /// Builds a private value from fixed bytes, for known-answer tests: the X25519 scalar
    /// (little endian, RFC 7748), the big-endian ECP scalar, or the big-endian MODP exponent
    /// (at most 64 octets).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn from_private_bytes(group: DhGroup, bytes: &[u8]) -> Option<Self> {
        let private = match group {
            DhGroup::Curve25519 => {
                Private::Curve25519(agreement::PrivateKey::from_private_key(&X25519, bytes).ok()?)
            }
            DhGroup::Ecp256 | DhGroup::Ecp384 => {
                Private::Ecp(agreement::PrivateKey::from_private_key(ecdh(group), bytes).ok()?)
            }
            DhGroup::Modp2048 => {
                if bytes.len() > 64 {
                    return None;
                }
                let mut padded = [0u8; 64];
                padded[64 - bytes.len()..].copy_from_slice(bytes);
                Private::Modp2048(Zeroizing::new(U512::from_be_slice(&padded)))
            }
        };
        let public = public_value(&private).ok()?;
        Some(Self {
            group,
            private,
            public,
        })
    }

    /// The group.
    #[must_use]
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public Key Exchange Data for the KE payload (computed once, at generation).
    #[must_use]
    pub fn public_bytes(&self) -> &[u8] {
        &self.public
    }

    /// Computes g^ir from the peer's Key Exchange Data, validating it first.
    ///
    /// # Errors
    /// [`DhError::BadLength`], [`DhError::InvalidPublicValue`] or
    /// [`DhError::DegenerateSharedSecret`]; see the module table.
    pub fn agree(&self, peer: &[u8]) -> Result<SharedSecret, DhError> {
        let expected = self.group.ke_data_len();
        if peer.len() != expected {
            return Err(DhError::BadLength {
                expected,
                got: peer.len(),
            });
        }
        let secret = match &self.private {
            Private::Curve25519(sk) => {
                // RFC 8031 §2: "MUST check whether the computed shared secret is the all-zero
                // value and abort if so" (RFC 7748 §6.1). AWS-LC's X25519 refuses that result
                // itself (its only failure for a 32-octet input); checked again here.
                let pk = UnparsedPublicKey::new(&X25519, peer);
                let shared = agreement::agree(sk, pk, DhError::DegenerateSharedSecret, |x| {
                    Ok(SecretBytes::from_slice(x))
                })?;
                if bool::from(shared.expose().ct_eq(&[0u8; 32])) {
                    return Err(DhError::DegenerateSharedSecret);
                }
                shared
            }
            Private::Ecp(sk) => {
                // RFC 5903 §7: x ‖ y; AWS-LC takes the uncompressed SEC1 form 0x04 ‖ x ‖ y and
                // refuses points not on the curve (RFC 6989 §2.3).
                let mut sec1 = Zeroizing::new(Vec::with_capacity(peer.len() + 1));
                sec1.push(0x04);
                sec1.extend_from_slice(peer);
                let pk = UnparsedPublicKey::new(ecdh(self.group), &sec1[..]);
                // RFC 5903 §9: g^ir is the x coordinate only, which is what ECDH yields.
                agreement::agree(sk, pk, DhError::InvalidPublicValue, |x| {
                    Ok(SecretBytes::from_slice(x))
                })?
            }
            Private::Modp2048(x) => {
                let y: &[u8; 256] = peer.try_into().map_err(|_| DhError::InvalidPublicValue)?;
                modp2048_agree(x, y)?
            }
        };
        Ok(SharedSecret(secret))
    }
}

/// The AWS-LC ECDH algorithm of an ECP group (P-384 for anything but P-256: only called for
/// the two ECP groups).
fn ecdh(group: DhGroup) -> &'static agreement::Algorithm {
    match group {
        DhGroup::Ecp256 => &ECDH_P256,
        _ => &ECDH_P384,
    }
}

/// The public Key Exchange Data of a private value.
fn public_value(private: &Private) -> Result<Vec<u8>, DhError> {
    Ok(match private {
        Private::Curve25519(sk) => sk
            .compute_public_key()
            .map_err(|_| DhError::Rng)?
            .as_ref()
            .to_vec(),
        // RFC 5903 §7: x ‖ y, each padded to the field size, without the SEC1 0x04 octet.
        Private::Ecp(sk) => {
            let pk = sk.compute_public_key().map_err(|_| DhError::Rng)?;
            pk.as_ref().get(1..).unwrap_or_default().to_vec()
        }
        Private::Modp2048(x) => {
            let g = FixedMontyForm::new(&U2048::from_u8(2), &MODP2048_PARAMS);
            let y = g.pow(&**x).retrieve();
            y.to_be_bytes().as_ref().to_vec()
        }
    })
}

fn modp2048_agree(x: &U512, peer: &[u8; 256]) -> Result<SecretBytes, DhError> {
    // Exactly 256 octets, so this conversion cannot panic.
    let y = U2048::from_be_slice(peer);
    // RFC 6989 §2.1: the recipient MUST check 1 < y < p−1. The peer value is public, so
    // variable-time comparisons are fine.
    if y <= U2048::ONE || y >= MODP2048_P_MINUS_1 {
        return Err(DhError::InvalidPublicValue);
    }
    let base = FixedMontyForm::new(&y, &MODP2048_PARAMS);
    // Constant-time (in the exponent) Montgomery ladder of crypto-bigint.
    let mut z = Zeroizing::new(base.pow(x).retrieve());
    // With p a safe prime and y validated, z ∈ {1, p−1} only if y has order 2 (excluded) or the
    // exponent is a multiple of q; check anyway.
    let degenerate = *z == U2048::ONE || *z == MODP2048_P_MINUS_1;
    // RFC 7296 §2.14: big endian, padded to the modulus length (U2048 is exactly 256 octets).
    let mut encoded = z.to_be_bytes();
    let out = SecretBytes::from_slice(encoded.as_ref());
    encoded.zeroize();
    z.zeroize();
    if degenerate {
        return Err(DhError::DegenerateSharedSecret);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::{hex, hexf, load_json};

    const ALL: [DhGroup; 4] = [
        DhGroup::Curve25519,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Modp2048,
    ];

    #[test]
    fn generate_and_agree_all_groups() {
        for g in ALL {
            let (a, pa) = KeyExchange::generate(g).unwrap();
            let (b, pb) = KeyExchange::generate(g).unwrap();
            assert_eq!(pa.len(), g.ke_data_len());
            assert_eq!(pa, a.public_bytes());
            let sa = a.agree(&pb).unwrap();
            let sb = b.agree(&pa).unwrap();
            assert_eq!(sa, sb, "{g:?}");
            assert_eq!(sa.len(), g.shared_secret_len());
            assert_ne!(pa, pb);
        }
    }

    #[test]
    fn debug_does_not_leak() {
        let (a, pa) = KeyExchange::generate(DhGroup::Curve25519).unwrap();
        let (b, _) = KeyExchange::generate(DhGroup::Curve25519).unwrap();
        assert_eq!(format!("{a:?}"), "KeyExchange { group: Curve25519, .. }");
        let s = b.agree(&pa).unwrap();
        assert_eq!(format!("{s:?}"), "SharedSecret([REDACTED; 32])");
    }

    #[test]
    fn rfc5903_vectors() {
        let v = load_json("dh-rfc5903.json");
        let mut n = 0;
        for c in v["vectors"].as_array().unwrap() {
            let group = match c["dh_group"].as_u64().unwrap() {
                19 => DhGroup::Ecp256,
                20 => DhGroup::Ecp384,
                _ => continue, // group 21 (P-521) is not implemented
            };
            let i = KeyExchange::from_private_bytes(group, &hexf(c, "i")).unwrap();
            let r = KeyExchange::from_private_bytes(group, &hexf(c, "r")).unwrap();
            let ke_i = hexf(c, "ke_data_i");
            let ke_r = hexf(c, "ke_data_r");
            assert_eq!(i.public_bytes(), ke_i);
            assert_eq!(r.public_bytes(), ke_r);
            // The KE payloads end with the KE data (8-octet header: generic header, group, 0).
            assert_eq!(&hexf(c, "kei")[8..], &ke_i[..]);
            assert_eq!(&hexf(c, "ker")[8..], &ke_r[..]);
            let want = hexf(c, "shared_secret_g_ir");
            assert_eq!(want, hexf(c, "girx"));
            assert_eq!(i.agree(&ke_r).unwrap().expose(), &want[..]);
            assert_eq!(r.agree(&ke_i).unwrap().expose(), &want[..]);
            n += 1;
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn ecp_rejects_points_not_on_curve() {
        for g in [DhGroup::Ecp256, DhGroup::Ecp384] {
            let (a, _) = KeyExchange::generate(g).unwrap();
            let (_, mut pb) = KeyExchange::generate(g).unwrap();
            let last = pb.len() - 1;
            pb[last] ^= 1; // y changed: no longer on the curve
            assert_eq!(a.agree(&pb), Err(DhError::InvalidPublicValue));
            assert_eq!(
                a.agree(&vec![0u8; g.ke_data_len()]),
                Err(DhError::InvalidPublicValue)
            );
            assert_eq!(
                a.agree(&[0u8; 65]),
                Err(DhError::BadLength {
                    expected: g.ke_data_len(),
                    got: 65
                })
            );
        }
    }

    #[test]
    fn x25519_vectors() {
        let v = load_json("dh-curve25519-curve448.json");
        // RFC 7748 §6.1.
        let d = &v["rfc7748_6_dh"]["X25519"];
        let alice = KeyExchange::from_private_bytes(DhGroup::Curve25519, &hexf(d, "alice_private"))
            .unwrap();
        let bob =
            KeyExchange::from_private_bytes(DhGroup::Curve25519, &hexf(d, "bob_private")).unwrap();
        assert_eq!(alice.public_bytes(), hexf(d, "alice_public"));
        assert_eq!(bob.public_bytes(), hexf(d, "bob_public"));
        let shared = hexf(d, "shared");
        assert_eq!(
            alice.agree(&hexf(d, "bob_public")).unwrap().expose(),
            &shared[..]
        );
        assert_eq!(
            bob.agree(&hexf(d, "alice_public")).unwrap().expose(),
            &shared[..]
        );
        // RFC 7748 §5.2 function vectors: X25519(scalar, u).
        let mut n = 0;
        for c in v["rfc7748_5_2_function_vectors"].as_array().unwrap() {
            if c["function"] != "X25519" {
                continue;
            }
            let k =
                KeyExchange::from_private_bytes(DhGroup::Curve25519, &hexf(c, "scalar")).unwrap();
            assert_eq!(
                k.agree(&hexf(c, "u")).unwrap().expose(),
                &hexf(c, "out")[..]
            );
            n += 1;
        }
        assert_eq!(n, 2);
        // RFC 8031 Appendix A: the private values are the random octets (clamping is X25519's).
        let a = &v["rfc8031_appendix_a"];
        let i = KeyExchange::from_private_bytes(DhGroup::Curve25519, &hexf(a, "random_i")).unwrap();
        let r = KeyExchange::from_private_bytes(DhGroup::Curve25519, &hexf(a, "random_r")).unwrap();
        assert_eq!(i.public_bytes(), hexf(a, "pub_i"));
        assert_eq!(r.public_bytes(), hexf(a, "pub_r"));
        assert_eq!(&hexf(a, "ke_payload_i_derived")[8..], &hexf(a, "pub_i")[..]);
        let s = hexf(a, "shared_secret");
        assert_eq!(i.agree(&hexf(a, "pub_r")).unwrap().expose(), &s[..]);
        assert_eq!(r.agree(&hexf(a, "pub_i")).unwrap().expose(), &s[..]);
        // The clamped scalar gives the same result.
        let f = KeyExchange::from_private_bytes(DhGroup::Curve25519, &hexf(a, "fixed_i")).unwrap();
        assert_eq!(f.public_bytes(), hexf(a, "pub_i"));
    }

    #[test]
    fn x25519_iterated_1000() {
        // RFC 7748 §5.2: k = u = 9; repeat (k, u) = (X25519(k, u), k).
        let v = load_json("dh-curve25519-curve448.json");
        let it = &v["rfc7748_5_2_iterated"]["X25519"];
        let mut k: [u8; 32] = hexf(it, "start").try_into().unwrap();
        let mut u = k;
        for round in 1..=1000 {
            let key = KeyExchange::from_private_bytes(DhGroup::Curve25519, &k).unwrap();
            let out: [u8; 32] = key.agree(&u).unwrap().expose().try_into().unwrap();
            u = k;
            k = out;
            if round == 1 {
                assert_eq!(k.to_vec(), hexf(it, "after_1"));
            }
        }
        assert_eq!(k.to_vec(), hexf(it, "after_1000"));
    }

    #[test]
    fn x25519_rejects_low_order_points() {
        let (a, _) = KeyExchange::generate(DhGroup::Curve25519).unwrap();
        // u = 0 and u = 1 are in the small subgroup: X25519 output is all zero.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(a.agree(&[0u8; 32]), Err(DhError::DegenerateSharedSecret));
        assert_eq!(a.agree(&one), Err(DhError::DegenerateSharedSecret));
        // A point of order 8 (from the libsodium blocklist).
        let p8 = hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        assert_eq!(a.agree(&p8), Err(DhError::DegenerateSharedSecret));
        assert!(matches!(
            a.agree(&[1u8; 31]),
            Err(DhError::BadLength { .. })
        ));
    }

    #[test]
    fn modp2048_prime_shape() {
        let p = MODP2048_P.as_ref();
        assert_eq!(p.bit_width_vartime(), 2048);
        assert!(bool::from(p.is_odd()));
        let bytes = p.to_be_bytes();
        let b = bytes.as_ref();
        assert_eq!(b.len(), 256);
        // RFC 3526: the high and low 64 bits are all ones.
        assert!(b[..8].iter().all(|&x| x == 0xff));
        assert!(b[248..].iter().all(|&x| x == 0xff));
        // p ≡ 7 (mod 8), so 2 is a quadratic residue and generates the subgroup of prime order
        // q = (p−1)/2: 2^q ≡ 1 (mod p). For a random typo in p this would fail.
        assert_eq!(b[255] & 7, 7);
        let q = MODP2048_P_MINUS_1.shr_vartime(1);
        let g = FixedMontyForm::new(&U2048::from_u8(2), &MODP2048_PARAMS);
        assert_eq!(g.pow_vartime(&q).retrieve(), U2048::ONE);
        // Fermat: 3^(p−1) ≡ 1.
        let three = FixedMontyForm::new(&U2048::from_u8(3), &MODP2048_PARAMS);
        assert_eq!(
            three.pow_vartime(&MODP2048_P_MINUS_1).retrieve(),
            U2048::ONE
        );
    }

    #[test]
    fn modp2048_known_answer() {
        let v = load_json("modp2048-kat.json");
        assert_eq!(hexf(&v, "p"), MODP2048_P.as_ref().to_be_bytes().as_ref());
        for c in v["cases"].as_array().unwrap() {
            let a = KeyExchange::from_private_bytes(DhGroup::Modp2048, &hexf(c, "x_i")).unwrap();
            let b = KeyExchange::from_private_bytes(DhGroup::Modp2048, &hexf(c, "x_r")).unwrap();
            assert_eq!(a.public_bytes(), hexf(c, "g_x_i"));
            assert_eq!(b.public_bytes(), hexf(c, "g_x_r"));
            assert_eq!(
                a.agree(&hexf(c, "g_x_r")).unwrap().expose(),
                &hexf(c, "g_ir")[..]
            );
        }
    }

    #[test]
    fn modp2048_rejects_bad_peer_values() {
        let (a, _) = KeyExchange::generate(DhGroup::Modp2048).unwrap();
        let p = MODP2048_P.as_ref().to_be_bytes().as_ref().to_vec();
        let pm1 = MODP2048_P_MINUS_1.to_be_bytes().as_ref().to_vec();
        let mut one = vec![0u8; 256];
        one[255] = 1;
        let mut two = vec![0u8; 256];
        two[255] = 2;
        for bad in [vec![0u8; 256], one, pm1, p, vec![0xff; 256]] {
            assert_eq!(a.agree(&bad), Err(DhError::InvalidPublicValue));
        }
        assert!(a.agree(&two).is_ok());
        assert!(matches!(
            a.agree(&[2u8; 255]),
            Err(DhError::BadLength { .. })
        ));
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn timing_keygen_and_agree() {
        for g in ALL {
            let n = 20;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let (a, pa) = KeyExchange::generate(g).unwrap();
                let (b, pb) = KeyExchange::generate(g).unwrap();
                let s1 = a.agree(&pb).unwrap();
                let s2 = b.agree(&pa).unwrap();
                assert_eq!(s1, s2);
            }
            let per = start.elapsed() / n;
            // One exchange seen from both sides: 2 × (keygen + agreement).
            println!(
                "{g:?}: 2 x (keygen + agree) = {per:?}, one side = {:?}",
                per / 2
            );
        }
    }
}
