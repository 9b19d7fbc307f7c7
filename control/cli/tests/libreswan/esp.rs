//! ESP built and opened by the test itself (RFC 4303 tunnel mode, AES-GCM per RFC 4106) with
//! the keys pluto handed to the kernel, independent of iketcp's own ESP code.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};

/// One ESP SA as pluto installed it (logged by the shim).
#[derive(Clone, Debug)]
pub struct PlutoSa {
    pub spi: u32,
    pub src: String,
    pub dst: String,
    pub esn: bool,
    /// AES-256 key and the 4-byte salt (RFC 4106 §8.1: the last four octets of the keymat).
    pub key: Vec<u8>,
}

fn cipher(sa: &PlutoSa) -> (Aes256Gcm, [u8; 4]) {
    assert_eq!(sa.key.len(), 36, "AES-256-GCM key and salt: {sa:?}");
    let c = Aes256Gcm::new_from_slice(&sa.key[..32]).unwrap();
    let salt = [sa.key[32], sa.key[33], sa.key[34], sa.key[35]];
    (c, salt)
}

/// RFC 4106 §5: the AAD is the SPI and the 32-bit sequence number, or with ESN the SPI and
/// the 64-bit extended sequence number (high half first).
fn aad(spi: u32, seq: u64, esn: bool) -> Vec<u8> {
    let mut a = spi.to_be_bytes().to_vec();
    if esn {
        a.extend_from_slice(&((seq >> 32) as u32).to_be_bytes());
    }
    a.extend_from_slice(&(seq as u32).to_be_bytes());
    a
}

/// An ESP packet (SPI to ICV) carrying `inner` (an IPv4 packet) in tunnel mode.
pub fn seal(sa: &PlutoSa, seq: u64, inner: &[u8]) -> Vec<u8> {
    let (c, salt) = cipher(sa);
    let iv = seq.to_be_bytes();
    // RFC 4303 §2.4: pad so that the Pad Length and Next Header end on a 4-byte boundary.
    let pad = (4 - (inner.len() + 2) % 4) % 4;
    let mut body = inner.to_vec();
    body.extend((1..=pad as u8).collect::<Vec<_>>());
    body.push(pad as u8);
    body.push(4); // Next Header: IPv4
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&salt);
    nonce[4..].copy_from_slice(&iv);
    let tag = c
        .encrypt_inout_detached(
            &nonce.into(),
            &aad(sa.spi, seq, sa.esn),
            body.as_mut_slice().into(),
        )
        .unwrap();
    let mut out = sa.spi.to_be_bytes().to_vec();
    out.extend_from_slice(&(seq as u32).to_be_bytes());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

/// The inner packet of an ESP packet of `sa`, or None when its ICV does not verify. The high
/// half of an extended sequence number is taken as 0 (fresh SAs in a test).
pub fn open(sa: &PlutoSa, esp: &[u8]) -> Option<Vec<u8>> {
    if esp.len() < 8 + 8 + 16 + 4 || u32::from_be_bytes(esp[..4].try_into().ok()?) != sa.spi {
        return None;
    }
    let (c, salt) = cipher(sa);
    let seq = u64::from(u32::from_be_bytes(esp[4..8].try_into().ok()?));
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&salt);
    nonce[4..].copy_from_slice(&esp[8..16]);
    let (ct, tag) = esp[16..].split_at(esp.len() - 16 - 16);
    let mut body = ct.to_vec();
    let tag: [u8; 16] = tag.try_into().ok()?;
    c.decrypt_inout_detached(
        &nonce.into(),
        &aad(sa.spi, seq, sa.esn),
        body.as_mut_slice().into(),
        &tag.into(),
    )
    .ok()?;
    let next = *body.last()?;
    let pad = usize::from(body[body.len() - 2]);
    assert_eq!(next, 4, "tunnel mode carries IPv4 here");
    body.truncate(body.len() - 2 - pad);
    Some(body)
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 ICMP echo request from `src` to `dst`.
pub fn echo_request(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    let payload = b"iketcp interop";
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// (source, destination, id, seq) of an IPv4 ICMP echo reply.
pub fn echo_reply(p: &[u8]) -> Option<([u8; 4], [u8; 4], u16, u16)> {
    if p.len() < 28 || p[0] != 0x45 || p[9] != 1 || p[20] != 0 {
        return None;
    }
    let a = |i: usize| [p[i], p[i + 1], p[i + 2], p[i + 3]];
    Some((
        a(12),
        a(16),
        u16::from_be_bytes([p[24], p[25]]),
        u16::from_be_bytes([p[26], p[27]]),
    ))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn esp_seal_then_open_round_trips_and_a_flipped_bit_fails() {
    for esn in [false, true] {
        let sa = PlutoSa {
            spi: 0x1234_5678,
            src: "192.0.2.2".into(),
            dst: "192.0.2.1".into(),
            esn,
            key: (0..36).collect(),
        };
        let inner = echo_request([203, 0, 113, 10], [198, 51, 100, 1], 7, 9);
        let mut esp = seal(&sa, 5, &inner);
        assert_eq!(open(&sa, &esp).as_deref(), Some(&inner[..]));
        esp[20] ^= 1;
        assert_eq!(open(&sa, &esp), None);
    }
}
