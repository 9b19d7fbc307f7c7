//! Key derivation for the IKE SA and Child SAs (RFC 7296 §2.13, §2.14, §2.17, §2.18).
//!
//! ```text
//! SKEYSEED = prf(Ni | Nr, g^ir)                                                 §2.14
//! {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
//!          = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)                               §2.14
//! KEYMAT   = prf+(SK_d, Ni | Nr)              or, with PFS,
//! KEYMAT   = prf+(SK_d, g^ir (new) | Ni | Nr)                                    §2.17
//! SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)     IKE SA rekey, old PRF     §2.18
//! ```
//!
//! Every derived value is a [`SecretBytes`] (wiped on drop, redacted in `Debug`).

use core::fmt;

use super::alg::{EncrAlg, IkeSuite, IntegAlg, PrfAlg};
use super::prf::{HashAlg, KeyedHmac, PrfError, prf_plus_into};
use super::secret::SecretBytes;

/// Which end of the IKE SA we are (RFC 7296 §2.2: the original initiator of the IKE SA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The original initiator.
    Initiator,
    /// The original responder.
    Responder,
}

/// Errors from key derivation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The PRF failed; in practice only [`PrfError::TooLong`] (more than 255 `prf+` blocks).
    Prf(PrfError),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prf(e) => write!(f, "key derivation: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

impl From<PrfError> for KeyError {
    fn from(e: PrfError) -> Self {
        Self::Prf(e)
    }
}

/// SKEYSEED. Wiped on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Skeyseed(SecretBytes);

impl Skeyseed {
    /// The SKEYSEED octets.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        self.0.expose()
    }
}

impl fmt::Debug for Skeyseed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Skeyseed([REDACTED; {}])", self.0.len())
    }
}

fn prf_h(hash: HashAlg, key: &[u8], data: &[&[u8]]) -> Result<SecretBytes, PrfError> {
    let mut out = SecretBytes::zeroed(hash.output_len());
    KeyedHmac::new(hash, key)?.mac_into(data, out.expose_mut());
    Ok(out)
}

fn prf_plus_h(
    hash: HashAlg,
    key: &[u8],
    seed: &[&[u8]],
    len: usize,
) -> Result<SecretBytes, PrfError> {
    let mut out = SecretBytes::zeroed(len);
    prf_plus_into(hash, key, seed, out.expose_mut())?;
    Ok(out)
}

fn skeyseed_h(hash: HashAlg, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> Result<Skeyseed, PrfError> {
    // RFC 7296 §2.14: the PRF key is Ni | Nr (public). The AES-XCBC/CMAC special case in §2.14
    // does not apply to the HMAC PRFs.
    let mut key = Vec::with_capacity(ni.len() + nr.len());
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    Ok(Skeyseed(prf_h(hash, &key, &[g_ir])?))
}

fn ike_sa_keymat_h(
    hash: HashAlg,
    skeyseed: &Skeyseed,
    ni: &[u8],
    nr: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    len: usize,
) -> Result<SecretBytes, PrfError> {
    prf_plus_h(hash, skeyseed.expose(), &[ni, nr, spi_i, spi_r], len)
}

fn child_keymat_h(
    hash: HashAlg,
    sk_d: &[u8],
    g_ir_new: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Result<SecretBytes, PrfError> {
    match g_ir_new {
        Some(g) => prf_plus_h(hash, sk_d, &[g, ni, nr], len),
        None => prf_plus_h(hash, sk_d, &[ni, nr], len),
    }
}

fn rekey_skeyseed_h(
    hash: HashAlg,
    old_sk_d: &[u8],
    g_ir_new: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> Result<Skeyseed, PrfError> {
    Ok(Skeyseed(prf_h(hash, old_sk_d, &[g_ir_new, ni, nr])?))
}

/// `SKEYSEED = prf(Ni | Nr, g^ir)` (RFC 7296 §2.14). `g_ir` is the shared secret from
/// [`super::dh::KeyExchange::agree`] (`SharedSecret::expose`).
///
/// # Errors
/// Only if the PRF rejects the key, which HMAC never does.
pub fn skeyseed(prf: PrfAlg, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> Result<Skeyseed, KeyError> {
    Ok(skeyseed_h(prf.hash(), ni, nr, g_ir)?)
}

/// `prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)` truncated to `len` octets (RFC 7296 §2.14): the
/// concatenation SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr. Use [`IkeSaKeys::derive`]
/// to get the split keys.
///
/// # Errors
/// [`KeyError::Prf`] if `len` exceeds 255 PRF blocks.
pub fn ike_sa_keymat(
    prf: PrfAlg,
    skeyseed: &Skeyseed,
    ni: &[u8],
    nr: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    len: usize,
) -> Result<SecretBytes, KeyError> {
    Ok(ike_sa_keymat_h(
        prf.hash(),
        skeyseed,
        ni,
        nr,
        spi_i,
        spi_r,
        len,
    )?)
}

/// Child SA KEYMAT (RFC 7296 §2.17): `prf+(SK_d, Ni | Nr)`, or with PFS
/// `prf+(SK_d, g^ir (new) | Ni | Nr)`. The nonces are those of the exchange that creates the
/// Child SA (IKE_AUTH: the IKE_SA_INIT nonces; CREATE_CHILD_SA: its own).
///
/// # Errors
/// [`KeyError::Prf`] if `len` exceeds 255 PRF blocks.
pub fn child_keymat(
    prf: PrfAlg,
    sk_d: &[u8],
    g_ir_new: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Result<SecretBytes, KeyError> {
    Ok(child_keymat_h(prf.hash(), sk_d, g_ir_new, ni, nr, len)?)
}

/// SKEYSEED of a rekeyed IKE SA: `prf(SK_d (old), g^ir (new) | Ni | Nr)` with the **old** IKE
/// SA's PRF (RFC 7296 §2.18).
///
/// # Errors
/// Only if the PRF rejects the key, which HMAC never does.
pub fn rekey_skeyseed(
    old_prf: PrfAlg,
    old_sk_d: &[u8],
    g_ir_new: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> Result<Skeyseed, KeyError> {
    Ok(rekey_skeyseed_h(
        old_prf.hash(),
        old_sk_d,
        g_ir_new,
        ni,
        nr,
    )?)
}

/// Lengths of the seven IKE SA keys for a suite (RFC 7296 §2.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IkeKeyLengths {
    /// SK_d, SK_pi, SK_pr: the PRF's preferred key length (RFC 7296 §2.13).
    pub sk_prf: usize,
    /// SK_ai, SK_ar: the INTEG key length; 0 with an AEAD cipher (RFC 5282 §7.1).
    pub sk_a: usize,
    /// SK_ei, SK_er: the cipher key plus salt for AEAD (RFC 5282 §7.1, RFC 7634 §3).
    pub sk_e: usize,
}

impl IkeKeyLengths {
    /// Lengths for a negotiated suite.
    #[must_use]
    pub fn for_suite(suite: &IkeSuite) -> Self {
        Self {
            sk_prf: suite.prf().key_len(),
            sk_a: suite.integ().map_or(0, IntegAlg::key_len),
            sk_e: suite.encr().keymat_len(),
        }
    }

    /// Total `prf+` output needed: 3 PRF keys, 2 integrity keys, 2 encryption keys.
    #[must_use]
    pub fn total(&self) -> usize {
        3 * self.sk_prf + 2 * self.sk_a + 2 * self.sk_e
    }
}

/// The seven secrets of an IKE SA (RFC 7296 §2.14). All are wiped on drop; `Debug` prints only
/// the suite.
#[derive(Clone)]
pub struct IkeSaKeys {
    suite: IkeSuite,
    sk_d: SecretBytes,
    sk_ai: SecretBytes,
    sk_ar: SecretBytes,
    sk_ei: SecretBytes,
    sk_er: SecretBytes,
    sk_pi: SecretBytes,
    sk_pr: SecretBytes,
}

impl fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkeSaKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl IkeSaKeys {
    /// Splits `prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)` into the seven keys, in the order SK_d,
    /// SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr (RFC 7296 §2.14).
    ///
    /// # Errors
    /// [`KeyError::Prf`] if the suite needs more than 255 PRF blocks (not possible with the
    /// supported algorithms).
    pub fn derive(
        suite: &IkeSuite,
        skeyseed: &Skeyseed,
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; 8],
        spi_r: &[u8; 8],
    ) -> Result<Self, KeyError> {
        let l = IkeKeyLengths::for_suite(suite);
        let km = ike_sa_keymat(suite.prf(), skeyseed, ni, nr, spi_i, spi_r, l.total())?;
        let mut rest = km.expose();
        // The lengths sum to exactly the KEYMAT length; `min` only keeps this panic-free.
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            SecretBytes::from_slice(head)
        };
        Ok(Self {
            suite: *suite,
            sk_d: take(l.sk_prf),
            sk_ai: take(l.sk_a),
            sk_ar: take(l.sk_a),
            sk_ei: take(l.sk_e),
            sk_er: take(l.sk_e),
            sk_pi: take(l.sk_prf),
            sk_pr: take(l.sk_prf),
        })
    }

    /// Keys of a new IKE SA from IKE_SA_INIT: SKEYSEED from the nonces and g^ir, then
    /// [`Self::derive`] (RFC 7296 §2.14). `spi_i` / `spi_r` are the IKE SA SPIs from the header.
    ///
    /// # Errors
    /// As [`Self::derive`].
    pub fn initial(
        suite: &IkeSuite,
        g_ir: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; 8],
        spi_r: &[u8; 8],
    ) -> Result<Self, KeyError> {
        let seed = skeyseed(suite.prf(), ni, nr, g_ir)?;
        Self::derive(suite, &seed, ni, nr, spi_i, spi_r)
    }

    /// Keys of the IKE SA that replaces `self` in a CREATE_CHILD_SA rekey (RFC 7296 §2.18):
    /// SKEYSEED with the old SA's PRF and SK_d, the keys with the new suite's PRF. `spi_i` and
    /// `spi_r` are the new SA's SPIs (from the SA payloads of the exchange); `ni`/`nr` are the
    /// exchange's nonces, ordered by the rekeying exchange's initiator and responder.
    ///
    /// # Errors
    /// As [`Self::derive`].
    pub fn rekeyed(
        &self,
        new_suite: &IkeSuite,
        g_ir_new: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; 8],
        spi_r: &[u8; 8],
    ) -> Result<Self, KeyError> {
        let seed = rekey_skeyseed(self.suite.prf(), self.sk_d.expose(), g_ir_new, ni, nr)?;
        Self::derive(new_suite, &seed, ni, nr, spi_i, spi_r)
    }

    /// KEYMAT for a Child SA, split per RFC 7296 §2.17 (see [`ChildSaKeys`]).
    ///
    /// # Errors
    /// [`KeyError::Prf`] if the lengths exceed 255 PRF blocks.
    pub fn child_sa_keys(
        &self,
        g_ir_new: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        lengths: ChildKeyLengths,
    ) -> Result<ChildSaKeys, KeyError> {
        ChildSaKeys::derive(
            self.suite.prf(),
            self.sk_d.expose(),
            g_ir_new,
            ni,
            nr,
            lengths,
        )
    }

    /// The negotiated suite.
    #[must_use]
    pub fn suite(&self) -> &IkeSuite {
        &self.suite
    }
    /// SK_d, for deriving Child SA keys and the next IKE SA.
    #[must_use]
    pub fn sk_d(&self) -> &[u8] {
        self.sk_d.expose()
    }
    /// SK_ai: integrity key for messages from the original initiator (empty with AEAD).
    #[must_use]
    pub fn sk_ai(&self) -> &[u8] {
        self.sk_ai.expose()
    }
    /// SK_ar: integrity key for messages from the original responder (empty with AEAD).
    #[must_use]
    pub fn sk_ar(&self) -> &[u8] {
        self.sk_ar.expose()
    }
    /// SK_ei: encryption key (‖ salt for AEAD) for messages from the original initiator.
    #[must_use]
    pub fn sk_ei(&self) -> &[u8] {
        self.sk_ei.expose()
    }
    /// SK_er: encryption key (‖ salt for AEAD) for messages from the original responder.
    #[must_use]
    pub fn sk_er(&self) -> &[u8] {
        self.sk_er.expose()
    }
    /// SK_pi: key for the initiator's AUTH payload (RFC 7296 §2.15).
    #[must_use]
    pub fn sk_pi(&self) -> &[u8] {
        self.sk_pi.expose()
    }
    /// SK_pr: key for the responder's AUTH payload.
    #[must_use]
    pub fn sk_pr(&self) -> &[u8] {
        self.sk_pr.expose()
    }

    /// (SK_e, SK_a) protecting messages sent by `sender` (RFC 7296 §2.14: "SK_ei/SK_ai for the
    /// initiator" — the original initiator of the IKE SA, whatever the exchange).
    #[must_use]
    pub fn sending_keys(&self, sender: Role) -> (&[u8], &[u8]) {
        match sender {
            Role::Initiator => (self.sk_ei(), self.sk_ai()),
            Role::Responder => (self.sk_er(), self.sk_ar()),
        }
    }
}

/// Key lengths for one Child SA direction: the encryption key (with salt for AEAD) and the
/// integrity key (RFC 7296 §2.17, RFC 4106 §8.1, RFC 7634 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildKeyLengths {
    /// Encryption key octets, including the salt for AEAD.
    pub encr: usize,
    /// Integrity key octets (0 for AEAD).
    pub integ: usize,
}

impl ChildKeyLengths {
    /// Lengths for an ESP SA with these transforms (ENCR IDs are shared between IKE and ESP).
    #[must_use]
    pub fn esp(encr: EncrAlg, integ: Option<IntegAlg>) -> Self {
        Self {
            encr: encr.keymat_len(),
            integ: integ.map_or(0, IntegAlg::key_len),
        }
    }

    /// KEYMAT octets for both directions.
    #[must_use]
    pub fn total(&self) -> usize {
        2 * (self.encr + self.integ)
    }
}

/// The keys of one Child SA pair. RFC 7296 §2.17: "All keys for SAs carrying data from the
/// initiator to the responder are taken before SAs going from the responder to the initiator"
/// and, within each, "the encryption key (if any) MUST be taken from the first bits and the
/// integrity key (if any) MUST be taken from the remaining bits". Initiator and responder here
/// are those of the exchange that creates the Child SA.
#[derive(Clone)]
pub struct ChildSaKeys {
    encr_i: SecretBytes,
    integ_i: SecretBytes,
    encr_r: SecretBytes,
    integ_r: SecretBytes,
}

impl fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSaKeys")
            .field("encr_len", &self.encr_i.len())
            .field("integ_len", &self.integ_i.len())
            .finish_non_exhaustive()
    }
}

impl ChildSaKeys {
    /// KEYMAT from SK_d (see [`child_keymat`]) split as described on the type.
    ///
    /// # Errors
    /// [`KeyError::Prf`] if the lengths exceed 255 PRF blocks.
    pub fn derive(
        prf: PrfAlg,
        sk_d: &[u8],
        g_ir_new: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        lengths: ChildKeyLengths,
    ) -> Result<Self, KeyError> {
        let km = child_keymat(prf, sk_d, g_ir_new, ni, nr, lengths.total())?;
        let mut rest = km.expose();
        // The lengths sum to exactly the KEYMAT length; `min` only keeps this panic-free.
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            SecretBytes::from_slice(head)
        };
        Ok(Self {
            encr_i: take(lengths.encr),
            integ_i: take(lengths.integ),
            encr_r: take(lengths.encr),
            integ_r: take(lengths.integ),
        })
    }

    /// Encryption key (‖ salt) for traffic from the initiator to the responder.
    #[must_use]
    pub fn encr_i_to_r(&self) -> &[u8] {
        self.encr_i.expose()
    }
    /// Integrity key for traffic from the initiator to the responder (empty for AEAD).
    #[must_use]
    pub fn integ_i_to_r(&self) -> &[u8] {
        self.integ_i.expose()
    }
    /// Encryption key (‖ salt) for traffic from the responder to the initiator.
    #[must_use]
    pub fn encr_r_to_i(&self) -> &[u8] {
        self.encr_r.expose()
    }
    /// Integrity key for traffic from the responder to the initiator (empty for AEAD).
    #[must_use]
    pub fn integ_r_to_i(&self) -> &[u8] {
        self.integ_r.expose()
    }

    /// (encryption, integrity) keys for the outbound SA of `us` (the role in the exchange that
    /// created the Child SA).
    #[must_use]
    pub fn outbound(&self, us: Role) -> (&[u8], &[u8]) {
        match us {
            Role::Initiator => (self.encr_i_to_r(), self.integ_i_to_r()),
            Role::Responder => (self.encr_r_to_i(), self.integ_r_to_i()),
        }
    }

    /// (encryption, integrity) keys for the inbound SA of `us`.
    #[must_use]
    pub fn inbound(&self, us: Role) -> (&[u8], &[u8]) {
        match us {
            Role::Initiator => self.outbound(Role::Responder),
            Role::Responder => self.outbound(Role::Initiator),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::alg::DhGroup;
    use crate::ike::crypto::test_util::{hexf, load_json};

    fn hash_of(name: &str) -> HashAlg {
        match name {
            "SHA-1" => HashAlg::Sha1,
            "SHA-224" => HashAlg::Sha224,
            "SHA-256" => HashAlg::Sha256,
            "SHA-384" => HashAlg::Sha384,
            "SHA-512" => HashAlg::Sha512,
            h => panic!("hash {h}"),
        }
    }

    fn prf_of(h: HashAlg) -> Option<PrfAlg> {
        match h {
            HashAlg::Sha1 => Some(PrfAlg::HmacSha1),
            HashAlg::Sha256 => Some(PrfAlg::HmacSha256),
            HashAlg::Sha384 => Some(PrfAlg::HmacSha384),
            HashAlg::Sha512 => Some(PrfAlg::HmacSha512),
            HashAlg::Sha224 => None,
        }
    }

    /// Runs one NIST CAVS / ACVP IKEv2 KDF case; returns true if the split-key checks ran too.
    fn run_case(hash: HashAlg, dkm_bits: u64, child_bits: u64, c: &serde_json::Value) -> bool {
        let (ni, nr, gir, gir_new) = (
            hexf(c, "ni"),
            hexf(c, "nr"),
            hexf(c, "gir"),
            hexf(c, "gir_new"),
        );
        let spi_i: [u8; 8] = hexf(c, "spi_i").try_into().unwrap();
        let spi_r: [u8; 8] = hexf(c, "spi_r").try_into().unwrap();
        let dkm_len = usize::try_from(dkm_bits / 8).unwrap();
        let child_len = usize::try_from(child_bits / 8).unwrap();
        let n = hash.output_len();

        let seed = skeyseed_h(hash, &ni, &nr, &gir).unwrap();
        assert_eq!(seed.expose(), &hexf(c, "skeyseed")[..], "SKEYSEED");
        let dkm = ike_sa_keymat_h(hash, &seed, &ni, &nr, &spi_i, &spi_r, dkm_len).unwrap();
        assert_eq!(dkm.expose(), &hexf(c, "dkm")[..], "DKM");
        let sk_d = &dkm.expose()[..n];
        let child = child_keymat_h(hash, sk_d, None, &ni, &nr, child_len).unwrap();
        assert_eq!(child.expose(), &hexf(c, "dkm_child_sa")[..], "DKM Child SA");
        let child_dh = child_keymat_h(hash, sk_d, Some(&gir_new), &ni, &nr, child_len).unwrap();
        assert_eq!(
            child_dh.expose(),
            &hexf(c, "dkm_child_sa_dh")[..],
            "DKM Child SA D-H"
        );
        let rekey = rekey_skeyseed_h(hash, sk_d, &gir_new, &ni, &nr).unwrap();
        assert_eq!(
            rekey.expose(),
            &hexf(c, "skeyseed_rekey")[..],
            "SKEYSEED rekey"
        );

        // Through the public API: the split keys are consecutive slices of the DKM.
        let Some(prf) = prf_of(hash) else {
            return false;
        };
        assert_eq!(skeyseed(prf, &ni, &nr, &gir).unwrap(), seed);
        let suite = IkeSuite::new(EncrAlg::AesGcm16_128, prf, None, DhGroup::Curve25519).unwrap();
        let l = IkeKeyLengths::for_suite(&suite);
        let lengths = ChildKeyLengths::esp(EncrAlg::AesCbc128, Some(IntegAlg::HmacSha256_128));
        if l.total() > dkm_len || lengths.total() > child_len {
            return false;
        }
        let keys = IkeSaKeys::initial(&suite, &gir, &ni, &nr, &spi_i, &spi_r).unwrap();
        let d = dkm.expose();
        let (p, e) = (l.sk_prf, l.sk_e);
        assert_eq!(keys.sk_d(), &d[..p]);
        assert!(keys.sk_ai().is_empty() && keys.sk_ar().is_empty());
        assert_eq!(keys.sk_ei(), &d[p..p + e]);
        assert_eq!(keys.sk_er(), &d[p + e..p + 2 * e]);
        assert_eq!(keys.sk_pi(), &d[p + 2 * e..2 * p + 2 * e]);
        assert_eq!(keys.sk_pr(), &d[2 * p + 2 * e..3 * p + 2 * e]);

        let ck = keys.child_sa_keys(None, &ni, &nr, lengths).unwrap();
        let k = child.expose();
        assert_eq!(ck.encr_i_to_r(), &k[..16]);
        assert_eq!(ck.integ_i_to_r(), &k[16..48]);
        assert_eq!(ck.encr_r_to_i(), &k[48..64]);
        assert_eq!(ck.integ_r_to_i(), &k[64..96]);
        let ck = keys
            .child_sa_keys(Some(&gir_new), &ni, &nr, lengths)
            .unwrap();
        assert_eq!(ck.encr_i_to_r(), &child_dh.expose()[..16]);

        // Rekey through the public API, same suite: SKEYSEED(rekey) then prf+ with the new SPIs.
        let rekeyed = keys
            .rekeyed(&suite, &gir_new, &ni, &nr, &spi_r, &spi_i)
            .unwrap();
        let want = IkeSaKeys::derive(&suite, &rekey, &ni, &nr, &spi_r, &spi_i).unwrap();
        assert_eq!(rekeyed.sk_d(), want.sk_d());
        assert_eq!(rekeyed.sk_pr(), want.sk_pr());
        true
    }

    #[test]
    fn nist_cavs_ikev2_kdf_all_cases() {
        let v = load_json("ikev2-kdf-nist.json");
        let mut per_group = Vec::new();
        let mut total = 0;
        let mut split_checked = 0;
        for g in v["groups"].as_array().unwrap() {
            let hash = hash_of(g["hash"].as_str().unwrap());
            let dkm = g["dkm_length_bits"].as_u64().unwrap();
            let child = g["child_sa_dkm_length_bits"].as_u64().unwrap();
            let tests = g["tests"].as_array().unwrap();
            for c in tests {
                if run_case(hash, dkm, child, c) {
                    split_checked += 1;
                }
            }
            per_group.push((g["hash"].clone(), g["ni_length_bits"].clone(), tests.len()));
            total += tests.len();
        }
        // 9 groups x 100 (SHA-1/256/384/512 with 64- and 2048-bit nonces, SHA-1 with 8192-bit g^ir).
        assert_eq!(per_group.len(), 9, "{per_group:?}");
        assert!(per_group.iter().all(|g| g.2 == 100), "{per_group:?}");
        assert_eq!(total, 900);
        // Split checks need DKM >= 3 * SK_d + 2 * 20 (AES-GCM-128): all SHA-1 groups and the
        // 3072-bit DKM groups of SHA-256/384/512.
        assert_eq!(split_checked, 600);
        // ACVP-Server unit tests (SHA-224 and SHA-256).
        let mut acvp = 0;
        for c in v["supplementary_acvp_server_unit_tests"]["tests"]
            .as_array()
            .unwrap()
        {
            let hash = hash_of(c["hash"].as_str().unwrap());
            let bits = c["dkm_length_bits"].as_u64().unwrap();
            run_case(hash, bits, bits, c);
            acvp += 1;
        }
        assert_eq!(acvp, 2);
    }

    #[test]
    fn key_lengths_per_suite() {
        let s = IkeSuite::new(
            EncrAlg::AesCbc256,
            PrfAlg::HmacSha384,
            Some(IntegAlg::HmacSha384_192),
            DhGroup::Ecp384,
        )
        .unwrap();
        let l = IkeKeyLengths::for_suite(&s);
        assert_eq!((l.sk_prf, l.sk_a, l.sk_e), (48, 48, 32));
        assert_eq!(l.total(), 3 * 48 + 2 * 48 + 2 * 32);
        let s = IkeSuite::new(
            EncrAlg::ChaCha20Poly1305,
            PrfAlg::HmacSha256,
            None,
            DhGroup::Curve25519,
        )
        .unwrap();
        let l = IkeKeyLengths::for_suite(&s);
        assert_eq!((l.sk_prf, l.sk_a, l.sk_e), (32, 0, 36));
        let keys = IkeSaKeys::initial(&s, &[1; 32], &[2; 32], &[3; 32], &[4; 8], &[5; 8]).unwrap();
        assert_eq!(keys.sk_ei().len(), 36);
        assert_eq!(keys.sending_keys(Role::Responder).0, keys.sk_er());
        let dbg = format!("{keys:?}");
        assert!(dbg.starts_with("IkeSaKeys { suite: IkeSuite {"), "{dbg}");
        assert!(dbg.ends_with(".. }"), "{dbg}");
    }

    #[test]
    fn child_key_order_and_roles() {
        let lengths = ChildKeyLengths::esp(EncrAlg::AesGcm16_256, None);
        assert_eq!(lengths, ChildKeyLengths { encr: 36, integ: 0 });
        let ck =
            ChildSaKeys::derive(PrfAlg::HmacSha256, &[9; 32], None, b"ni", b"nr", lengths).unwrap();
        let km = child_keymat(PrfAlg::HmacSha256, &[9; 32], None, b"ni", b"nr", 72).unwrap();
        assert_eq!(ck.outbound(Role::Initiator).0, &km.expose()[..36]);
        assert_eq!(ck.inbound(Role::Initiator).0, &km.expose()[36..]);
        assert_eq!(ck.outbound(Role::Responder), ck.inbound(Role::Initiator));
        assert!(ck.outbound(Role::Initiator).1.is_empty());
    }

    #[test]
    fn too_much_keymat_is_an_error() {
        let lengths = ChildKeyLengths {
            encr: 4000,
            integ: 100,
        };
        assert!(matches!(
            ChildSaKeys::derive(PrfAlg::HmacSha1, &[0; 20], None, b"a", b"b", lengths),
            Err(KeyError::Prf(PrfError::TooLong { .. }))
        ));
    }
}
