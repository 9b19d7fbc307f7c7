//! IKE fragments (RFC 7383 §2.5) built by the test itself with the keys of an IKE SA it set up,
//! independent of iketcp's own SKF code: AES-256-GCM (RFC 5282), the IKE header and the SKF
//! payload header as the AAD, the nonce the 4-byte salt and the 8-byte IV.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};

/// The initiator's sending key of one IKE SA, from its `ikev2_decryption_table` line.
pub struct InitiatorKey {
    cipher: Aes256Gcm,
    salt: [u8; 4],
}

const HEADER: usize = 28;
const SK: u8 = 46;
const SKF: u8 = 53;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

impl InitiatorKey {
    /// From `Session::keylog_ike()`: SPIs, SK_ei (key ‖ salt), SK_er, ... (AES-GCM-256 only).
    pub fn from_keylog(line: &str) -> Self {
        let f: Vec<&str> = line.split(',').collect();
        assert!(f[4].contains("AES-GCM-256"), "the test's suite: {}", f[4]);
        let sk_ei = unhex(f[2]);
        assert_eq!(sk_ei.len(), 36);
        InitiatorKey {
            cipher: Aes256Gcm::new_from_slice(&sk_ei[..32]).unwrap(),
            salt: sk_ei[32..].try_into().unwrap(),
        }
    }

    fn nonce(&self, iv: &[u8; 8]) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(iv);
        n
    }

    /// The first inner payload type and the decrypted chain of the initiator's SK message `msg`.
    pub fn open(&self, msg: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(msg[16], SK, "one SK payload");
        let aad = &msg[..HEADER + 4];
        let iv: [u8; 8] = msg[HEADER + 4..HEADER + 12].try_into().unwrap();
        let (ct, tag) = msg[HEADER + 12..].split_at(msg.len() - HEADER - 12 - 16);
        let mut body = ct.to_vec();
        let tag: [u8; 16] = tag.try_into().unwrap();
        self.cipher
            .decrypt_inout_detached(
                &self.nonce(&iv).into(),
                aad,
                body.as_mut_slice().into(),
                &tag.into(),
            )
            .unwrap();
        let pad = usize::from(*body.last().unwrap());
        body.truncate(body.len() - 1 - pad);
        (msg[HEADER], body)
    }

    /// Fragment `number` of `total` of the message whose IKE header is `header` (from an
    /// unfragmented message of the exchange: SPIs, exchange, flags, Message ID), carrying
    /// `plain`; `first` is the first inner payload type (fragment 1 only, else 0).
    pub fn fragment(
        &self,
        header: &[u8],
        first: u8,
        number: u16,
        total: u16,
        plain: &[u8],
    ) -> Vec<u8> {
        let mut body = plain.to_vec();
        body.push(0); // Pad Length (RFC 7296 §3.14): no padding
        let iv: [u8; 8] = {
            let mut v = [0xa5u8; 8];
            v[..2].copy_from_slice(&number.to_be_bytes());
            v
        };
        let payload_len = 8 + iv.len() + body.len() + 16;
        let mut msg = header[..HEADER].to_vec();
        msg[16] = SKF;
        msg[24..28].copy_from_slice(&((HEADER + payload_len) as u32).to_be_bytes());
        msg.push(if number == 1 { first } else { 0 });
        msg.push(0);
        msg.extend_from_slice(&(payload_len as u16).to_be_bytes());
        msg.extend_from_slice(&number.to_be_bytes());
        msg.extend_from_slice(&total.to_be_bytes());
        let tag = self
            .cipher
            .encrypt_inout_detached(&self.nonce(&iv).into(), &msg, body.as_mut_slice().into())
            .unwrap();
        msg.extend_from_slice(&iv);
        msg.extend_from_slice(&body);
        msg.extend_from_slice(&tag);
        msg
    }
}
