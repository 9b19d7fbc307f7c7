//! Protection of the Encrypted (SK) payload, RFC 7296 §3.14.
//!
//! Message layout (everything before the IV is supplied by the wire codec and authenticated):
//!
//! ```text
//! IKE header (28) ‖ unencrypted payloads ‖ SK generic header (4) ‖ IV ‖ C ‖ [ICV]
//! ```
//!
//! * AEAD (ENCR_AES_GCM_16, RFC 5282; ENCR_CHACHA20_POLY1305, RFC 7634 §3): 8-octet IV, nonce =
//!   salt (last 4 octets of SK_e) ‖ IV (RFC 5282 §4), AAD = every octet before the IV (RFC 5282
//!   §5.1), C = AEAD(payloads ‖ padding ‖ pad length) ‖ 16-octet tag. The IV is a per-key 64-bit
//!   counter, so it never repeats under a key (RFC 5282 §3.1). We send no padding (RFC 7634 §3).
//! * ENCR_AES_CBC (RFC 3602) + AUTH_HMAC_SHA2_* (RFC 4868): random, unpredictable 16-octet IV
//!   (RFC 7296 §3.14), payloads padded to the block size, ICV = truncated HMAC over the whole
//!   message from the IKE header through the Pad Length (encrypt-then-MAC), verified before
//!   decryption.
//!
//! The receiver accepts any Padding up to 255 octets that fits (RFC 5282 §3, RFC 7296 §3.14).
//! Each [`SkCipher`] is one direction of one IKE SA: the sender's SK_e/SK_a (RFC 7296 §2.14).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use aes::cipher::array::Array;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::{Zeroize, Zeroizing};

use super::alg::{EncrAlg, IntegAlg};
use super::integ::IntegKey;
use super::keys::{IkeSaKeys, Role};

/// Length of the fixed IKE header (RFC 7296 §3.1).
pub const IKE_HEADER_LEN: usize = 28;
/// Length of the generic payload header of the Encrypted payload (RFC 7296 §3.2, §3.14).
pub const SK_HEADER_LEN: usize = 4;
/// Offset of the Length field in the IKE header (RFC 7296 §3.1).
const IKE_LENGTH_OFFSET: usize = 24;
/// AES block size.
const AES_BLOCK: usize = 16;
/// AEAD tag length (GCM-16, Poly1305).
const AEAD_TAG: usize = 16;

/// Errors from SK payload protection. Authentication failures are reported as
/// [`SkError::Integrity`] without detail; padding is only inspected after authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkError {
    /// A key of the wrong length, or a cipher/integrity combination RFC 5282 §8 forbids.
    Key,
    /// The message is too short or its lengths (IKE header Length, SK payload Length, ciphertext
    /// alignment) are inconsistent.
    Malformed,
    /// The ICV or AEAD tag did not verify.
    Integrity,
    /// Pad Length exceeds the decrypted data (only possible from a peer holding the key).
    Padding,
    /// The protected payload would exceed the 16-bit SK payload Length (RFC 7296 §3.2).
    TooLong,
    /// 2^64 messages were sent under this key; the IKE SA must be rekeyed (RFC 5282 §3.1).
    IvExhausted,
    /// The system random number generator failed (CBC IV).
    Rng,
}

impl fmt::Display for SkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Key => "bad SK_e/SK_a key or algorithm combination",
            Self::Malformed => "malformed Encrypted payload",
            Self::Integrity => "Encrypted payload failed integrity check",
            Self::Padding => "bad Encrypted payload padding",
            Self::TooLong => "Encrypted payload too long",
            Self::IvExhausted => "IV space exhausted: rekey the IKE SA",
            Self::Rng => "random number generator failure",
        })
    }
}

impl std::error::Error for SkError {}

enum Inner {
    Gcm128 {
        aead: Aes128Gcm,
        salt: [u8; 4],
    },
    Gcm256 {
        aead: Aes256Gcm,
        salt: [u8; 4],
    },
    ChaCha {
        aead: ChaCha20Poly1305,
        salt: [u8; 4],
    },
    Cbc128 {
        aes: aes::Aes128,
        mac: IntegKey,
    },
    Cbc256 {
        aes: aes::Aes256,
        mac: IntegKey,
    },
}

/// One direction of SK payload protection (the sender's SK_e and SK_a). Seals with a per-key IV
/// counter, so it may be shared (`&self`) between threads. Key material is wiped on drop (the
/// cipher crates are built with `zeroize`); `Debug` prints only the algorithms.
pub struct SkCipher {
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    inner: Inner,
    next_iv: AtomicU64,
}

impl fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkCipher")
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .finish_non_exhaustive()
    }
}

impl Drop for SkCipher {
    fn drop(&mut self) {
        match &mut self.inner {
            Inner::Gcm128 { salt, .. }
            | Inner::Gcm256 { salt, .. }
            | Inner::ChaCha { salt, .. } => {
                salt.zeroize();
            }
            Inner::Cbc128 { .. } | Inner::Cbc256 { .. } => {}
        }
    }
}

fn split_salt(sk_e: &[u8], key_len: usize) -> Result<(&[u8], [u8; 4]), SkError> {
    if sk_e.len() != key_len + 4 {
        return Err(SkError::Key);
    }
    let (key, salt) = sk_e.split_at(key_len);
    let salt: [u8; 4] = salt.try_into().map_err(|_| SkError::Key)?;
    Ok((key, salt))
}

fn nonce(salt: &[u8; 4], iv: &[u8]) -> [u8; 12] {
    // RFC 5282 §4 / RFC 7634 §2: nonce = salt ‖ IV.
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

fn read_u16(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 2)?;
    Some(usize::from(u16::from_be_bytes([s[0], s[1]])))
}

fn read_u32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    usize::try_from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])).ok()
}

impl SkCipher {
    /// Keys one direction. `sk_e` is SK_ei or SK_er (key ‖ salt for AEAD); `sk_a` is SK_ai or
    /// SK_ar and must be empty with an AEAD cipher.
    ///
    /// # Errors
    /// [`SkError::Key`] for wrong key lengths or an AEAD cipher combined with INTEG (or CBC
    /// without).
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        sk_e: &[u8],
        sk_a: &[u8],
    ) -> Result<Self, SkError> {
        let inner = match (encr, integ) {
            (EncrAlg::AesGcm16_128, None) if sk_a.is_empty() => {
                let (key, salt) = split_salt(sk_e, 16)?;
                let aead = Aes128Gcm::new_from_slice(key).map_err(|_| SkError::Key)?;
                Inner::Gcm128 { aead, salt }
            }
            (EncrAlg::AesGcm16_256, None) if sk_a.is_empty() => {
                let (key, salt) = split_salt(sk_e, 32)?;
                let aead = Aes256Gcm::new_from_slice(key).map_err(|_| SkError::Key)?;
                Inner::Gcm256 { aead, salt }
            }
            (EncrAlg::ChaCha20Poly1305, None) if sk_a.is_empty() => {
                let (key, salt) = split_salt(sk_e, 32)?;
                let aead = ChaCha20Poly1305::new_from_slice(key).map_err(|_| SkError::Key)?;
                Inner::ChaCha { aead, salt }
            }
            (EncrAlg::AesCbc128, Some(i)) => Inner::Cbc128 {
                aes: aes::Aes128::new_from_slice(sk_e).map_err(|_| SkError::Key)?,
                mac: IntegKey::new(i, sk_a).map_err(|_| SkError::Key)?,
            },
            (EncrAlg::AesCbc256, Some(i)) => Inner::Cbc256 {
                aes: aes::Aes256::new_from_slice(sk_e).map_err(|_| SkError::Key)?,
                mac: IntegKey::new(i, sk_a).map_err(|_| SkError::Key)?,
            },
            _ => return Err(SkError::Key),
        };
        Ok(Self {
            encr,
            integ,
            inner,
            next_iv: AtomicU64::new(0),
        })
    }

    /// The cipher.
    #[must_use]
    pub fn encr(&self) -> EncrAlg {
        self.encr
    }

    /// The integrity algorithm (`None` for AEAD).
    #[must_use]
    pub fn integ(&self) -> Option<IntegAlg> {
        self.integ
    }

    /// Octets of the checksum at the end of the message: the AEAD tag or the truncated ICV.
    fn icv_len(&self) -> usize {
        match &self.inner {
            Inner::Gcm128 { .. } | Inner::Gcm256 { .. } | Inner::ChaCha { .. } => AEAD_TAG,
            Inner::Cbc128 { mac, .. } | Inner::Cbc256 { mac, .. } => mac.alg().icv_len(),
        }
    }

    /// Padding the sender uses for `plaintext_len` octets of payloads: none for AEAD
    /// (RFC 7634 §3), the minimum to reach the block size for CBC (RFC 7296 §3.14).
    fn pad_len(&self, plaintext_len: usize) -> usize {
        let b = self.encr.block_len();
        (b - (plaintext_len + 1) % b) % b
    }

    /// Length of the Encrypted payload after its 4-octet generic header (IV ‖ encrypted payloads,
    /// padding and Pad Length ‖ tag or ICV) for `plaintext_len` octets of inner payloads. The
    /// codec needs it to fill in the SK payload Length (`4 +` this) and the IKE header Length
    /// before calling [`Self::seal`].
    #[must_use]
    pub fn sealed_body_len(&self, plaintext_len: usize) -> usize {
        self.encr.iv_len() + plaintext_len + self.pad_len(plaintext_len) + 1 + self.icv_len()
    }

    /// Protects `plaintext` (the chain of inner payloads) and appends the complete message,
    /// `header_and_sk_header ‖ IV ‖ ciphertext ‖ tag/ICV`, to `out`.
    ///
    /// `header_and_sk_header` is everything before the IV: the IKE header, any unencrypted
    /// payloads and the 4-octet Encrypted payload header, with the IKE header Length and the SK
    /// payload Length already set for the final message (they are authenticated). Use
    /// [`Self::sealed_body_len`] to compute them.
    ///
    /// # Errors
    /// [`SkError::Malformed`] if the prefix is shorter than 32 octets or its Length fields do not
    /// match; [`SkError::TooLong`]; [`SkError::IvExhausted`]; [`SkError::Rng`]. On error `out` is
    /// left as it was.
    pub fn seal(
        &self,
        header_and_sk_header: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SkError> {
        let pad = self.pad_len(plaintext.len());
        self.seal_inner(header_and_sk_header, plaintext, None, pad, out)
    }

    /// [`Self::seal`] with a caller-chosen IV and padding length, for tests only.
    #[cfg(test)]
    pub(crate) fn seal_with(
        &self,
        header_and_sk_header: &[u8],
        plaintext: &[u8],
        iv: Option<&[u8]>,
        pad: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), SkError> {
        self.seal_inner(header_and_sk_header, plaintext, iv, pad, out)
    }

    fn fresh_iv(&self, iv: &mut [u8]) -> Result<(), SkError> {
        if self.encr.is_aead() {
            // RFC 5282 §3.1: the IV must be unique under the key; a counter is allowed.
            let n = self
                .next_iv
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(1))
                .map_err(|_| SkError::IvExhausted)?;
            iv.copy_from_slice(&n.to_be_bytes());
            Ok(())
        } else {
            // RFC 7296 §3.14: "Senders MUST select a new unpredictable IV for every message".
            crate::rng::fill(iv).map_err(|_| SkError::Rng)
        }
    }

    fn seal_inner(
        &self,
        prefix: &[u8],
        plaintext: &[u8],
        fixed_iv: Option<&[u8]>,
        pad: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), SkError> {
        if prefix.len() < IKE_HEADER_LEN + SK_HEADER_LEN {
            return Err(SkError::Malformed);
        }
        // The Pad Length is one octet, and CBC needs block alignment.
        let pad_octet = u8::try_from(pad).map_err(|_| SkError::TooLong)?;
        if !(plaintext.len() + pad + 1).is_multiple_of(self.encr.block_len()) {
            return Err(SkError::Malformed);
        }
        let body_len = self.encr.iv_len() + plaintext.len() + pad + 1 + self.icv_len();
        let sk_payload_len = SK_HEADER_LEN + body_len;
        if sk_payload_len > usize::from(u16::MAX) {
            return Err(SkError::TooLong);
        }
        let total = prefix.len() + body_len;
        if read_u32(prefix, IKE_LENGTH_OFFSET) != Some(total)
            || read_u16(prefix, prefix.len() - 2) != Some(sk_payload_len)
        {
            return Err(SkError::Malformed);
        }

        let iv_len = self.encr.iv_len();
        let mut iv = [0u8; AES_BLOCK];
        match fixed_iv {
            Some(v) if v.len() == iv_len => iv[..iv_len].copy_from_slice(v),
            Some(_) => return Err(SkError::Malformed),
            None => self.fresh_iv(&mut iv[..iv_len])?,
        }

        let start = out.len();
        out.reserve(total);
        out.extend_from_slice(prefix);
        out.extend_from_slice(&iv[..iv_len]);
        out.extend_from_slice(plaintext);
        // Padding "MAY contain any value chosen by the sender" (RFC 7296 §3.14): zeros.
        out.resize(out.len() + pad, 0);
        out.push(pad_octet);

        let result = self.encrypt_appending(out, start, prefix.len(), &iv[..iv_len]);
        match result {
            Ok(()) => {
                debug_assert_eq!(out.len() - start, total);
                Ok(())
            }
            Err(e) => {
                // Do not leave plaintext behind in the caller's buffer.
                if let Some(tail) = out.get_mut(start..) {
                    tail.zeroize();
                }
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// `out[start..]` = prefix (`aad_len` octets) ‖ IV ‖ plaintext ‖ padding ‖ pad length.
    /// Encrypts the plaintext part in place and appends the tag or ICV.
    fn encrypt_appending(
        &self,
        out: &mut Vec<u8>,
        start: usize,
        aad_len: usize,
        iv: &[u8],
    ) -> Result<(), SkError> {
        let (head, body) = out
            .get_mut(start..)
            .ok_or(SkError::Malformed)?
            .split_at_mut(aad_len + iv.len());
        // RFC 5282 §5.1: AAD = IKE header through the SK payload header, without the IV.
        let aad = &head[..aad_len];
        match &self.inner {
            Inner::Gcm128 { aead, salt } => {
                let tag = aead
                    .encrypt_inout_detached(&nonce(salt, iv).into(), aad, body.into())
                    .map_err(|_| SkError::TooLong)?;
                out.extend_from_slice(&tag);
            }
            Inner::Gcm256 { aead, salt } => {
                let tag = aead
                    .encrypt_inout_detached(&nonce(salt, iv).into(), aad, body.into())
                    .map_err(|_| SkError::TooLong)?;
                out.extend_from_slice(&tag);
            }
            Inner::ChaCha { aead, salt } => {
                let tag = aead
                    .encrypt_inout_detached(&nonce(salt, iv).into(), aad, body.into())
                    .map_err(|_| SkError::TooLong)?;
                out.extend_from_slice(&tag);
            }
            Inner::Cbc128 { aes, mac } => {
                let enc = cbc::Encryptor::<aes::Aes128>::inner_iv_slice_init(aes.clone(), iv)
                    .map_err(|_| SkError::Malformed)?;
                cbc_encrypt(enc, body)?;
                append_icv(mac, out, start);
            }
            Inner::Cbc256 { aes, mac } => {
                let enc = cbc::Encryptor::<aes::Aes256>::inner_iv_slice_init(aes.clone(), iv)
                    .map_err(|_| SkError::Malformed)?;
                cbc_encrypt(enc, body)?;
                append_icv(mac, out, start);
            }
        }
        Ok(())
    }

    /// Verifies and decrypts the Encrypted payload of `message` (a complete IKE message whose
    /// last payload is SK), returning the inner payload chain without padding and Pad Length.
    /// `sk_offset` is the offset of the Encrypted payload's generic header.
    ///
    /// The IKE header Length must equal `message.len()` and the SK payload Length must reach the
    /// end of the message (RFC 7296 §3.14: the Encrypted payload is the last payload).
    ///
    /// # Errors
    /// [`SkError::Malformed`] for inconsistent lengths, [`SkError::Integrity`] if authentication
    /// fails, [`SkError::Padding`] for an authenticated but impossible Pad Length. Never panics.
    pub fn open(&self, message: &[u8], sk_offset: usize) -> Result<Vec<u8>, SkError> {
        let len = message.len();
        let body_start = sk_offset
            .checked_add(SK_HEADER_LEN)
            .ok_or(SkError::Malformed)?;
        if sk_offset < IKE_HEADER_LEN
            || body_start > len
            || read_u32(message, IKE_LENGTH_OFFSET) != Some(len)
            || read_u16(message, sk_offset + 2) != Some(len - sk_offset)
        {
            return Err(SkError::Malformed);
        }
        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        // At least the IV, one octet (the Pad Length) or one AES block, and the tag or ICV.
        let min_ct = self.encr.block_len();
        if len - body_start < iv_len + min_ct + icv_len {
            return Err(SkError::Malformed);
        }
        let iv = &message[body_start..body_start + iv_len];
        let ct_start = body_start + iv_len;
        let icv_start = len - icv_len;
        let icv = &message[icv_start..];
        let mut buf = Zeroizing::new(message[ct_start..icv_start].to_vec());
        let aad = &message[..body_start];

        match &self.inner {
            Inner::Gcm128 { aead, salt } => aead_open(aead, salt, iv, aad, &mut buf, icv)?,
            Inner::Gcm256 { aead, salt } => aead_open(aead, salt, iv, aad, &mut buf, icv)?,
            Inner::ChaCha { aead, salt } => aead_open(aead, salt, iv, aad, &mut buf, icv)?,
            Inner::Cbc128 { aes, mac } => {
                cbc_check(mac, message, icv_start, buf.len())?;
                let dec = cbc::Decryptor::<aes::Aes128>::inner_iv_slice_init(aes.clone(), iv)
                    .map_err(|_| SkError::Malformed)?;
                cbc_decrypt(dec, &mut buf)?;
            }
            Inner::Cbc256 { aes, mac } => {
                cbc_check(mac, message, icv_start, buf.len())?;
                let dec = cbc::Decryptor::<aes::Aes256>::inner_iv_slice_init(aes.clone(), iv)
                    .map_err(|_| SkError::Malformed)?;
                cbc_decrypt(dec, &mut buf)?;
            }
        }

        // RFC 5282 §3 Figure 2 / RFC 7296 §3.14: payloads ‖ Padding ‖ Pad Length. Any Pad Length
        // that fits is accepted (at most 255 by construction).
        let pad_len = usize::from(*buf.last().ok_or(SkError::Padding)?);
        let payloads_len = buf.len().checked_sub(pad_len + 1).ok_or(SkError::Padding)?;
        buf[payloads_len..].zeroize();
        buf.truncate(payloads_len);
        Ok(core::mem::take(&mut *buf))
    }
}

impl IkeSaKeys {
    /// SK payload protection for this IKE SA as seen by `us`: (outbound, inbound). The original
    /// initiator sends with SK_ei/SK_ai and receives with SK_er/SK_ar (RFC 7296 §2.14).
    ///
    /// # Errors
    /// [`SkError::Key`] if the keys do not fit the suite (cannot happen for derived keys).
    pub fn sk_ciphers(&self, us: Role) -> Result<(SkCipher, SkCipher), SkError> {
        let peer = match us {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        };
        let suite = self.suite();
        let (oe, oa) = self.sending_keys(us);
        let (ie, ia) = self.sending_keys(peer);
        Ok((
            SkCipher::new(suite.encr(), suite.integ(), oe, oa)?,
            SkCipher::new(suite.encr(), suite.integ(), ie, ia)?,
        ))
    }
}

fn aead_open<A: AeadInOut>(
    aead: &A,
    salt: &[u8; 4],
    iv: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), SkError> {
    let nonce = aes_gcm::aead::Nonce::<A>::try_from(&nonce(salt, iv)[..])
        .map_err(|_| SkError::Malformed)?;
    let tag = aes_gcm::aead::Tag::<A>::try_from(tag).map_err(|_| SkError::Malformed)?;
    aead.decrypt_inout_detached(&nonce, aad, buf.into(), &tag)
        .map_err(|_| SkError::Integrity)
}

fn cbc_encrypt<E>(mut enc: E, buf: &mut [u8]) -> Result<(), SkError>
where
    E: BlockModeEncrypt + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    let (blocks, rest) = Array::slice_as_chunks_mut(buf);
    if !rest.is_empty() {
        return Err(SkError::Malformed);
    }
    enc.encrypt_blocks(blocks);
    Ok(())
}

fn cbc_decrypt<D>(mut dec: D, buf: &mut [u8]) -> Result<(), SkError>
where
    D: BlockModeDecrypt + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    let (blocks, rest) = Array::slice_as_chunks_mut(buf);
    if !rest.is_empty() {
        return Err(SkError::Malformed);
    }
    dec.decrypt_blocks(blocks);
    Ok(())
}

/// RFC 7296 §3.14: ICV over the whole message from the IKE header through the Pad Length.
fn append_icv(mac: &IntegKey, out: &mut Vec<u8>, start: usize) {
    let icv = mac.compute(&[out.get(start..).unwrap_or_default()]);
    out.extend_from_slice(icv.as_bytes());
}

/// Checks CBC alignment, then the ICV (before any decryption: encrypt-then-MAC).
fn cbc_check(
    mac: &IntegKey,
    message: &[u8],
    icv_start: usize,
    ct_len: usize,
) -> Result<(), SkError> {
    if ct_len == 0 || !ct_len.is_multiple_of(AES_BLOCK) {
        return Err(SkError::Malformed);
    }
    if mac.verify(&[&message[..icv_start]], &message[icv_start..]) {
        Ok(())
    } else {
        Err(SkError::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::alg::{DhGroup, IkeSuite, PrfAlg};
    use crate::ike::crypto::test_util::{hexf, load_json};
    use proptest::prelude::*;

    /// Every supported (ENCR, INTEG) combination.
    fn suites() -> Vec<(EncrAlg, Option<IntegAlg>)> {
        let mut v = vec![
            (EncrAlg::AesGcm16_128, None),
            (EncrAlg::AesGcm16_256, None),
            (EncrAlg::ChaCha20Poly1305, None),
        ];
        for e in [EncrAlg::AesCbc128, EncrAlg::AesCbc256] {
            for i in [
                IntegAlg::HmacSha256_128,
                IntegAlg::HmacSha384_192,
                IntegAlg::HmacSha512_256,
            ] {
                v.push((e, Some(i)));
            }
        }
        v
    }

    fn cipher(encr: EncrAlg, integ: Option<IntegAlg>, seed: u8) -> SkCipher {
        let sk_e: Vec<u8> = (0..encr.keymat_len()).map(|i| seed ^ (i as u8)).collect();
        let sk_a: Vec<u8> = (0..integ.map_or(0, IntegAlg::key_len))
            .map(|i| seed.wrapping_add(0x80) ^ (i as u8))
            .collect();
        SkCipher::new(encr, integ, &sk_e, &sk_a).unwrap()
    }

    /// IKE header ‖ `unencrypted` ‖ SK header, with both Length fields set for `body_len`.
    fn prefix(unencrypted: &[u8], body_len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&[0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7]);
        p.extend_from_slice(&[0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7]);
        let first = if unencrypted.is_empty() { 46 } else { 41 };
        p.extend_from_slice(&[first, 0x20, 37, 0x08, 0, 0, 0, 7]);
        let total = 28 + unencrypted.len() + 4 + body_len;
        p.extend_from_slice(&u32::try_from(total).unwrap().to_be_bytes());
        p.extend_from_slice(unencrypted);
        p.extend_from_slice(&[41, 0]);
        p.extend_from_slice(&u16::try_from(4 + body_len).unwrap().to_be_bytes());
        p
    }

    fn seal(c: &SkCipher, unencrypted: &[u8], plaintext: &[u8]) -> (Vec<u8>, usize) {
        let pre = prefix(unencrypted, c.sealed_body_len(plaintext.len()));
        let mut out = Vec::new();
        c.seal(&pre, plaintext, &mut out).unwrap();
        (out, pre.len() - SK_HEADER_LEN)
    }

    #[test]
    fn rfc7634_appendix_b_decrypt_and_reencrypt() {
        let v = load_json("esp-chacha20-rfc7634.json");
        let x = &v["ikev2_example"];
        let mut sk_e = hexf(x, "key");
        sk_e.extend_from_slice(&hexf(x, "salt"));
        assert_eq!(sk_e.len(), EncrAlg::ChaCha20Poly1305.keymat_len());
        let c = SkCipher::new(EncrAlg::ChaCha20Poly1305, None, &sk_e, &[]).unwrap();
        let msg = hexf(x, "ike_message");
        // AAD = IKE header (28) ‖ SK payload header (4), RFC 7634 §3.
        assert_eq!(&msg[..32], &hexf(x, "aad")[..]);
        let plain = c.open(&msg, IKE_HEADER_LEN).unwrap();
        assert_eq!(plain, hexf(x, "notify_payload_set_window_size_10"));

        let mut out = vec![0xaa, 0xbb]; // seal appends
        c.seal_with(&msg[..32], &plain, Some(&hexf(x, "iv")), 0, &mut out)
            .unwrap();
        assert_eq!(&out[2..], &msg[..]);
        assert_eq!(c.sealed_body_len(plain.len()), msg.len() - 32);
        // The production path produces the same layout with a counter IV.
        let mut again = Vec::new();
        c.seal(&msg[..32], &plain, &mut again).unwrap();
        assert_eq!(again.len(), msg.len());
        assert_eq!(&again[32..40], &[0u8; 8]);
        assert_eq!(c.open(&again, 28).unwrap(), plain);
    }

    #[test]
    fn round_trip_every_suite() {
        for (e, i) in suites() {
            let tx = cipher(e, i, 1);
            for len in [0usize, 1, 14, 15, 16, 17, 31, 100, 1000] {
                let plain: Vec<u8> = (0..len).map(|b| b as u8).collect();
                for unenc in [&[][..], &[0u8, 0, 0, 8, 1, 2, 3, 4][..]] {
                    let (msg, off) = seal(&tx, unenc, &plain);
                    assert_eq!(msg.len(), 28 + unenc.len() + 4 + tx.sealed_body_len(len));
                    if !e.is_aead() {
                        let ct = msg.len() - off - 4 - 16 - i.unwrap().icv_len();
                        assert_eq!(ct % 16, 0);
                    }
                    let got = tx.open(&msg, off).unwrap();
                    assert_eq!(got, plain, "{e:?} {i:?} {len}");
                    // A different key fails.
                    let rx = cipher(e, i, 2);
                    assert_eq!(rx.open(&msg, off), Err(SkError::Integrity));
                }
            }
        }
    }

    #[test]
    fn ivs_do_not_repeat() {
        for (e, i) in suites() {
            let c = cipher(e, i, 3);
            let (a, off) = seal(&c, &[], b"same");
            let (b, _) = seal(&c, &[], b"same");
            let iv = off + 4..off + 4 + e.iv_len();
            assert_ne!(a[iv.clone()], b[iv.clone()], "{e:?}");
            assert_ne!(a, b);
            if e.is_aead() {
                assert_eq!(&a[iv.clone()], &0u64.to_be_bytes());
                assert_eq!(&b[iv], &1u64.to_be_bytes());
            }
        }
    }

    #[test]
    fn iv_counter_exhaustion() {
        let c = cipher(EncrAlg::AesGcm16_128, None, 4);
        c.next_iv.store(u64::MAX - 1, Ordering::Relaxed);
        let pre = prefix(&[], c.sealed_body_len(3));
        let mut out = Vec::new();
        c.seal(&pre, b"abc", &mut out).unwrap();
        let before = out.clone();
        assert_eq!(c.seal(&pre, b"abc", &mut out), Err(SkError::IvExhausted));
        assert_eq!(out, before);
    }

    #[test]
    fn receiver_accepts_any_padding() {
        for (e, i) in suites() {
            let c = cipher(e, i, 5);
            let plain = b"payload chain";
            let pads: &[usize] = if e.is_aead() {
                &[0, 1, 7, 254, 255]
            } else {
                &[2, 18, 242]
            };
            for &pad in pads {
                let body = e.iv_len() + plain.len() + pad + 1 + c.icv_len();
                let pre = prefix(&[], body);
                let mut out = Vec::new();
                c.seal_with(&pre, plain, None, pad, &mut out).unwrap();
                assert_eq!(c.open(&out, 28).unwrap(), plain, "{e:?} pad {pad}");
            }
            // Padding above 255 cannot be expressed; CBC misalignment is refused.
            let mut out = Vec::new();
            assert!(
                c.seal_with(&prefix(&[], 0), plain, None, 256, &mut out)
                    .is_err()
            );
            if !e.is_aead() {
                assert_eq!(
                    c.seal_with(&prefix(&[], 0), plain, None, 3, &mut out),
                    Err(SkError::Malformed)
                );
            }
            assert!(out.is_empty());
        }
    }

    #[test]
    fn authenticated_bad_pad_length_is_rejected() {
        // Build an AEAD message by hand whose decrypted plaintext is [0x05]: Pad Length 5 with
        // no room for it.
        let sk_e = [7u8; 36];
        let c = SkCipher::new(EncrAlg::ChaCha20Poly1305, None, &sk_e, &[]).unwrap();
        let aead = ChaCha20Poly1305::new_from_slice(&sk_e[..32]).unwrap();
        let mut msg = prefix(&[], 8 + 1 + 16);
        let iv = [0u8; 8];
        let n = nonce(&[7; 4], &iv);
        let mut ct = [0x05u8];
        let tag = aead
            .encrypt_inout_detached(&n.into(), &msg, (&mut ct[..]).into())
            .unwrap();
        msg.extend_from_slice(&iv);
        msg.extend_from_slice(&ct);
        msg.extend_from_slice(&tag);
        assert_eq!(c.open(&msg, 28), Err(SkError::Padding));
    }

    #[test]
    fn seal_checks_length_fields() {
        let c = cipher(EncrAlg::AesCbc128, Some(IntegAlg::HmacSha256_128), 6);
        let mut out = vec![1, 2, 3];
        let mut pre = prefix(&[], c.sealed_body_len(10));
        pre[27] ^= 1;
        assert_eq!(c.seal(&pre, &[0; 10], &mut out), Err(SkError::Malformed));
        let mut pre = prefix(&[], c.sealed_body_len(10));
        let n = pre.len();
        pre[n - 1] ^= 1;
        assert_eq!(c.seal(&pre, &[0; 10], &mut out), Err(SkError::Malformed));
        assert_eq!(
            c.seal(&pre[..20], &[0; 10], &mut out),
            Err(SkError::Malformed)
        );
        let big = vec![0u8; 70_000];
        let pre = prefix(&[], 0);
        assert_eq!(c.seal(&pre, &big, &mut out), Err(SkError::TooLong));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn open_checks_length_fields() {
        let c = cipher(EncrAlg::AesGcm16_256, None, 8);
        let (msg, off) = seal(&c, &[], b"x");
        assert_eq!(c.open(&msg[..msg.len() - 1], off), Err(SkError::Malformed));
        assert_eq!(c.open(&msg, off + 1), Err(SkError::Malformed));
        assert_eq!(c.open(&msg, 0), Err(SkError::Malformed));
        assert_eq!(c.open(&msg, usize::MAX), Err(SkError::Malformed));
        let mut longer = msg.clone();
        longer.push(0);
        assert_eq!(c.open(&longer, off), Err(SkError::Malformed));
    }

    #[test]
    fn keys_to_ciphers() {
        for (e, i) in suites() {
            let suite = IkeSuite::new(e, PrfAlg::HmacSha256, i, DhGroup::Curve25519).unwrap();
            let keys =
                IkeSaKeys::initial(&suite, &[1; 32], &[2; 16], &[3; 16], &[4; 8], &[5; 8]).unwrap();
            let (i_out, i_in) = keys.sk_ciphers(Role::Initiator).unwrap();
            let (r_out, r_in) = keys.sk_ciphers(Role::Responder).unwrap();
            let (m1, off) = seal(&i_out, &[], b"IKE_AUTH request");
            assert_eq!(r_in.open(&m1, off).unwrap(), b"IKE_AUTH request");
            assert_eq!(i_in.open(&m1, off), Err(SkError::Integrity));
            let (m2, off) = seal(&r_out, &[], b"IKE_AUTH response");
            assert_eq!(i_in.open(&m2, off).unwrap(), b"IKE_AUTH response");
        }
    }

    #[test]
    fn constructor_rejects_bad_keys() {
        assert_eq!(
            SkCipher::new(EncrAlg::AesGcm16_128, None, &[0; 16], &[]).err(),
            Some(SkError::Key)
        );
        assert_eq!(
            SkCipher::new(EncrAlg::AesGcm16_128, None, &[0; 20], &[0; 32]).err(),
            Some(SkError::Key)
        );
        assert_eq!(
            SkCipher::new(EncrAlg::AesCbc128, None, &[0; 16], &[]).err(),
            Some(SkError::Key)
        );
        assert_eq!(
            SkCipher::new(
                EncrAlg::AesCbc256,
                Some(IntegAlg::HmacSha256_128),
                &[0; 16],
                &[0; 32]
            )
            .err(),
            Some(SkError::Key)
        );
        let c = cipher(EncrAlg::ChaCha20Poly1305, None, 9);
        assert_eq!(
            format!("{c:?}"),
            "SkCipher { encr: ChaCha20Poly1305, integ: None, .. }"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn any_flipped_byte_fails(
            suite in 0usize..9,
            plain in proptest::collection::vec(any::<u8>(), 0..80),
            unenc in proptest::collection::vec(any::<u8>(), 0..12),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let (e, i) = suites()[suite];
            let c = cipher(e, i, 10);
            let (mut msg, off) = seal(&c, &unenc, &plain);
            prop_assert_eq!(c.open(&msg, off).unwrap(), plain);
            let p = pos.index(msg.len());
            msg[p] ^= mask;
            prop_assert!(c.open(&msg, off).is_err(), "{:?} {:?} flipped {}", e, i, p);
        }

        #[test]
        fn random_input_never_panics(
            suite in 0usize..9,
            msg in proptest::collection::vec(any::<u8>(), 0..160),
            off in 0usize..200,
        ) {
            let (e, i) = suites()[suite];
            let c = cipher(e, i, 11);
            let _ = c.open(&msg, off);
        }

        #[test]
        fn random_body_with_valid_lengths_fails_integrity(
            suite in 0usize..9,
            body in proptest::collection::vec(any::<u8>(), 0..160),
        ) {
            let (e, i) = suites()[suite];
            let c = cipher(e, i, 12);
            let mut msg = prefix(&[], body.len());
            msg.extend_from_slice(&body);
            let r = c.open(&msg, 28);
            prop_assert!(matches!(r, Err(SkError::Integrity | SkError::Malformed)), "{:?}", r);
        }
    }
}
