//! Receiving IKE fragments over TCP (RFC 9329 §7.5, RFC 7383 §2.5–§2.6).
//!
//! R-7.5-a: we never send SKF payloads and never announce IKEV2_FRAGMENTATION_SUPPORTED over
//! TCP. R-7.5-b: a peer may still fragment, so Encrypted Fragment payloads protected with the
//! established IKE SA keys (IKE_AUTH and later) are verified one by one, collected per Message ID
//! and, once complete, the reassembled chain is processed exactly like the decrypted content of an
//! unfragmented SK message (never encrypted again).
//!
//! Bounds: at most [`MAX_FRAGMENTS`] fragments, at most [`MAX_REASSEMBLED`] octets of reassembled
//! plaintext, duplicates ignored, and an incomplete set is discarded after [`REASSEMBLY_TIMEOUT`].

use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::{Zeroize, Zeroizing};

use crate::ike::crypto::{EncrAlg, IkeSaKeys, IntegKey, Role};
use crate::ike::wire::{Header, PayloadType, locate_encrypted};

/// Most fragments accepted for one message.
pub(super) const MAX_FRAGMENTS: u16 = 64;
/// Largest reassembled inner payload chain.
pub(super) const MAX_REASSEMBLED: usize = 64 * 1024;
/// An incomplete fragment set older than this is discarded.
pub(super) const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A decrypted and authenticated fragment.
pub(super) struct Fragment {
    pub header: Header,
    pub first_payload: PayloadType,
    pub number: u16,
    pub total: u16,
    pub plain: Zeroizing<Vec<u8>>,
}

/// Why a fragment was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FragError {
    Malformed,
    Integrity,
}

/// Fragments of one message, keyed by its Message ID (and direction).
#[derive(Debug)]
pub(super) struct Reassembly {
    message_id: u32,
    response: bool,
    total: u16,
    started: Instant,
    header: Header,
    first_payload: PayloadType,
    parts: Vec<Option<Zeroizing<Vec<u8>>>>,
    size: usize,
}

/// Result of adding a fragment.
pub(super) enum Added {
    /// Stored; more fragments are needed.
    Pending,
    /// Dropped (duplicate, inconsistent, or over a bound); the buffer is unchanged.
    Dropped,
    /// All fragments arrived: the header, first inner payload type and reassembled chain.
    Complete(Header, PayloadType, Zeroizing<Vec<u8>>),
}

fn peer(us: Role) -> Role {
    match us {
        Role::Initiator => Role::Responder,
        Role::Responder => Role::Initiator,
    }
}

fn gcm_nonce(salt: &[u8], iv: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

fn aead_decrypt<A: AeadInOut>(
    aead: &A,
    n: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), FragError> {
    let n = Nonce::<A>::try_from(&n[..]).map_err(|_| FragError::Malformed)?;
    let t = Tag::<A>::try_from(tag).map_err(|_| FragError::Malformed)?;
    aead.decrypt_inout_detached(&n, aad, buf.into(), &t)
        .map_err(|_| FragError::Integrity)
}

fn aead_encrypt<A: AeadInOut>(
    aead: &A,
    n: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<Vec<u8>, FragError> {
    let n = Nonce::<A>::try_from(&n[..]).map_err(|_| FragError::Malformed)?;
    let tag = aead
        .encrypt_inout_detached(&n, aad, buf.into())
        .map_err(|_| FragError::Malformed)?;
    Ok(tag.to_vec())
}

fn cbc_blocks(buf: &mut [u8], key: &[u8], iv: &[u8], encrypt: bool) -> Result<(), FragError> {
    use aes::cipher::array::Array;
    use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
    let (blocks, rest) = Array::slice_as_chunks_mut(buf);
    if !rest.is_empty() {
        return Err(FragError::Malformed);
    }
    match (key.len(), encrypt) {
        (16, false) => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| FragError::Malformed)?
            .decrypt_blocks(blocks),
        (32, false) => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| FragError::Malformed)?
            .decrypt_blocks(blocks),
        (16, true) => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| FragError::Malformed)?
            .encrypt_blocks(blocks),
        (32, true) => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| FragError::Malformed)?
            .encrypt_blocks(blocks),
        _ => return Err(FragError::Malformed),
    }
    Ok(())
}

/// Runs the AEAD or CBC transform of `encr` over `buf` (the ciphertext region) for a message
/// whose associated data is `aad`. Decryption verifies `tag` first; encryption returns the tag.
fn aead_dispatch(
    encr: EncrAlg,
    sk_e: &[u8],
    iv: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    tag: Option<&[u8]>,
) -> Result<Vec<u8>, FragError> {
    let split = sk_e.len().checked_sub(4).ok_or(FragError::Malformed)?;
    let (key, salt) = sk_e.split_at(split);
    let n = gcm_nonce(salt, iv);
    macro_rules! run {
        ($t:ty) => {{
            let a = <$t>::new_from_slice(key).map_err(|_| FragError::Malformed)?;
            match tag {
                Some(t) => aead_decrypt(&a, &n, aad, buf, t).map(|()| Vec::new()),
                None => aead_encrypt(&a, &n, aad, buf),
            }
        }};
    }
    match encr {
        EncrAlg::AesGcm16_128 => run!(Aes128Gcm),
        EncrAlg::AesGcm16_256 => run!(Aes256Gcm),
        EncrAlg::ChaCha20Poly1305 => run!(ChaCha20Poly1305),
        _ => Err(FragError::Malformed),
    }
}

/// Verifies and decrypts one SKF message with the peer's sending keys (RFC 7383 §2.5: AAD is
/// every octet before the IV, including Fragment Number and Total Fragments).
pub(super) fn open_fragment(keys: &IkeSaKeys, us: Role, msg: &[u8]) -> Result<Fragment, FragError> {
    let info = Header::parse(msg).map_err(|_| FragError::Malformed)?;
    let layout = locate_encrypted(msg)
        .ok()
        .flatten()
        .filter(|l| l.kind == PayloadType::SKF)
        .ok_or(FragError::Malformed)?;
    let h = layout.header.clone();
    if h.end != layout.body.start || layout.body.end != msg.len() || h.end < h.start + 8 {
        return Err(FragError::Malformed);
    }
    let first_payload = PayloadType(msg[h.start]);
    let number = u16::from_be_bytes([msg[h.start + 4], msg[h.start + 5]]);
    let total = u16::from_be_bytes([msg[h.start + 6], msg[h.start + 7]]);
    let suite = keys.suite();
    let encr = suite.encr();
    let (sk_e, sk_a) = keys.sending_keys(peer(us));
    let iv_len = encr.iv_len();
    let icv_len = match suite.integ() {
        Some(i) => i.icv_len(),
        None => 16,
    };
    let body = layout.body.clone();
    if body.len() < iv_len + encr.block_len() + icv_len {
        return Err(FragError::Malformed);
    }
    let iv = &msg[body.start..body.start + iv_len];
    let icv_start = msg.len() - icv_len;
    let mut buf = Zeroizing::new(msg[body.start + iv_len..icv_start].to_vec());
    let aad = &msg[..h.end];
    match suite.integ() {
        None => {
            aead_dispatch(encr, sk_e, iv, aad, &mut buf, Some(&msg[icv_start..]))?;
        }
        Some(i) => {
            if buf.is_empty() || !buf.len().is_multiple_of(16) {
                return Err(FragError::Malformed);
            }
            let mac = IntegKey::new(i, sk_a).map_err(|_| FragError::Malformed)?;
            if !mac.verify(&[&msg[..icv_start]], &msg[icv_start..]) {
                return Err(FragError::Integrity);
            }
            cbc_blocks(&mut buf, sk_e, iv, false)?;
        }
    }
    let pad = usize::from(*buf.last().ok_or(FragError::Malformed)?);
    let keep = buf.len().checked_sub(pad + 1).ok_or(FragError::Malformed)?;
    buf[keep..].zeroize();
    buf.truncate(keep);
    Ok(Fragment {
        header: info.header,
        first_payload,
        number,
        total,
        plain: buf,
    })
}

/// Encrypts one SKF message as `sender` would (the receive path is tested and fuzzed against
/// it; the session itself never sends fragments, R-7.5-a). `None` if it cannot be encoded.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn seal_fragment(
    keys: &IkeSaKeys,
    sender: Role,
    header: Header,
    first_payload: PayloadType,
    number: u16,
    total: u16,
    plain: &[u8],
) -> Option<Vec<u8>> {
    use crate::ike::wire::{Message, Payload, SkfPayload};
    let suite = keys.suite();
    let encr = suite.encr();
    let (sk_e, sk_a) = keys.sending_keys(sender);
    let b = encr.block_len();
    let pad = (b - (plain.len() + 1) % b) % b;
    let icv_len = suite.integ().map_or(16, |i| i.icv_len());
    let iv_len = encr.iv_len();
    let body_len = iv_len + plain.len() + pad + 1 + icv_len;
    let skel = Message {
        header,
        payloads: vec![Payload::Skf(SkfPayload {
            first_payload: PayloadType(0),
            fragment_number: 1,
            total_fragments: 1,
            body: vec![0; body_len],
        })],
    }
    .to_bytes()
    .ok()?;
    let layout = locate_encrypted(&skel).ok()??;
    let aad_end = layout.header.end;
    let mut out = skel[..aad_end].to_vec();
    // Written by hand so that tests can also build fragments the codec would refuse.
    let at = layout.header.start;
    out[at] = first_payload.0;
    out[at + 4..at + 6].copy_from_slice(&number.to_be_bytes());
    out[at + 6..at + 8].copy_from_slice(&total.to_be_bytes());
    let mut iv = vec![0u8; iv_len];
    iv[..2].copy_from_slice(&number.to_be_bytes());
    iv[iv_len - 1] = 0xf7;
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + pad, 0);
    buf.push(u8::try_from(pad).ok()?);
    match suite.integ() {
        None => {
            let tag = aead_dispatch(encr, sk_e, &iv, &out, &mut buf, None).ok()?;
            out.extend_from_slice(&iv);
            out.extend_from_slice(&buf);
            out.extend_from_slice(&tag);
        }
        Some(i) => {
            cbc_blocks(&mut buf, sk_e, &iv, true).ok()?;
            out.extend_from_slice(&iv);
            out.extend_from_slice(&buf);
            let mac = IntegKey::new(i, sk_a).ok()?;
            let icv = mac.compute(&[&out]);
            out.extend_from_slice(icv.as_bytes());
        }
    }
    (out.len() == skel.len()).then_some(out)
}

impl Reassembly {
    /// Adds an authenticated fragment. `slot` holds the current set (at most one message).
    pub(super) fn add(slot: &mut Option<Reassembly>, f: Fragment, now: Instant) -> Added {
        if f.total == 0 || f.total > MAX_FRAGMENTS || f.number == 0 || f.number > f.total {
            return Added::Dropped;
        }
        // RFC 7383 §2.5: Next Payload is the first inner payload in fragment 1, zero otherwise.
        if (f.number == 1) == (f.first_payload == PayloadType(0)) {
            return Added::Dropped;
        }
        if slot
            .as_ref()
            .is_some_and(|r| now.saturating_duration_since(r.started) > REASSEMBLY_TIMEOUT)
        {
            *slot = None;
        }
        let same = slot.as_ref().is_some_and(|r| {
            r.message_id == f.header.message_id && r.response == f.header.flags.response
        });
        if same {
            let Some(r) = slot.as_ref() else {
                return Added::Dropped;
            };
            if r.total != f.total || r.parts[usize::from(f.number - 1)].is_some() {
                return Added::Dropped;
            }
        }
        let old_size = if same {
            slot.as_ref().map_or(0, |r| r.size)
        } else {
            0
        };
        if old_size + f.plain.len() > MAX_REASSEMBLED {
            if same {
                // The set can never complete within bounds: discard it.
                *slot = None;
            }
            return Added::Dropped;
        }
        if !same {
            *slot = Some(Reassembly {
                message_id: f.header.message_id,
                response: f.header.flags.response,
                total: f.total,
                started: now,
                header: f.header,
                first_payload: PayloadType(0),
                parts: vec![None; usize::from(f.total)],
                size: 0,
            });
        }
        let Some(r) = slot.as_mut() else {
            return Added::Dropped;
        };
        if f.number == 1 {
            r.first_payload = f.first_payload;
            r.header = f.header;
        }
        r.size += f.plain.len();
        r.parts[usize::from(f.number - 1)] = Some(f.plain);
        if r.parts.iter().any(Option::is_none) {
            return Added::Pending;
        }
        let Some(done) = slot.take() else {
            return Added::Dropped;
        };
        let mut all = Zeroizing::new(Vec::with_capacity(done.size));
        for p in done.parts.iter().flatten() {
            all.extend_from_slice(p);
        }
        Added::Complete(done.header, done.first_payload, all)
    }
}
