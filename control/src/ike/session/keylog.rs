//! Key export for Wireshark (written only when the operator asks for it): see `Session::keylog`.
//!
//! Lines follow Wireshark's UAT files `ikev2_decryption_table` (IKE SA keys) and `esp_sa`
//! (ESP SA keys): one CSV line per SA, every field in double quotes. The algorithm names are
//! the strings of Wireshark's `vs_ikev2_encr_algs` / `vs_ikev2_auth_algs` (packet-isakmp.c) and
//! its ESP encryption list (packet-ipsec.c).

use core::fmt::Write as _;
use std::net::IpAddr;

use super::Session;
use crate::ike::crypto::{EncrAlg, EspSuite, IntegAlg};

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Wireshark's IKEv2 UAT name of an encryption algorithm.
fn ike_encr_name(e: EncrAlg) -> &'static str {
    match e {
        EncrAlg::AesCbc128 => "AES-CBC-128 [RFC3602]",
        EncrAlg::AesCbc256 => "AES-CBC-256 [RFC3602]",
        EncrAlg::AesGcm16_128 => "AES-GCM-128 with 16 octet ICV [RFC5282]",
        EncrAlg::AesGcm16_256 => "AES-GCM-256 with 16 octet ICV [RFC5282]",
        // Not in the Wireshark versions checked; the closest name in the same style.
        EncrAlg::ChaCha20Poly1305 => "ChaCha20-Poly1305 [RFC7634]",
    }
}

/// Wireshark's IKEv2 UAT name of an integrity algorithm (`None` for AEAD ciphers).
fn ike_integ_name(i: Option<IntegAlg>) -> &'static str {
    match i {
        None => "NONE [RFC4306]",
        Some(IntegAlg::HmacSha256_128) => "HMAC_SHA2_256_128 [RFC4868]",
        Some(IntegAlg::HmacSha384_192) => "HMAC_SHA2_384_192 [RFC4868]",
        Some(IntegAlg::HmacSha512_256) => "HMAC_SHA2_512_256 [RFC4868]",
    }
}

/// Wireshark's `esp_sa` name of an ESP encryption algorithm.
fn esp_encr_name(s: EspSuite) -> &'static str {
    match s {
        EspSuite::AesGcm16_128 | EspSuite::AesGcm16_256 => "AES-GCM with 16 octet ICV [RFC4106]",
        // tshark 4.0 (the one checked) has no ChaCha20 for ESP and refuses this line; the name
        // follows the style of its other entries.
        EspSuite::ChaCha20Poly1305 => "ChaCha20 with Poly1305 [RFC7634]",
    }
}

/// Quotes each field and joins them with commas.
fn csv(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(",")
}

/// An `ikev2_decryption_table` line. `sk_ei` / `sk_er` include the salt for AEAD ciphers.
pub fn ike_line(
    spi_i: u64,
    spi_r: u64,
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    keys: [&[u8]; 4],
) -> String {
    let [sk_ei, sk_er, sk_ai, sk_ar] = keys;
    // Wireshark writes byte fields of a UAT as bare hex and only strings in quotes; it refuses
    // to load quoted SPIs and keys ("Length of Initiator's SPI must be 8 octets").
    let q = |name: &str| format!("\"{name}\"");
    [
        format!("{spi_i:016x}"),
        format!("{spi_r:016x}"),
        hex(sk_ei),
        hex(sk_er),
        q(ike_encr_name(encr)),
        hex(sk_ai),
        hex(sk_ar),
        q(ike_integ_name(integ)),
    ]
    .join(",")
}

/// An `esp_sa` line for the ESP SA `spi` carrying traffic from `src` to `dst` (outer addresses;
/// `None` writes the wildcard `*`). `keymat` is the SA's key ‖ salt.
pub fn esp_line(
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    spi: u32,
    suite: EspSuite,
    keymat: &[u8],
) -> String {
    let proto = match src.or(dst) {
        Some(IpAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    };
    let addr = |a: Option<IpAddr>| a.map_or_else(|| "*".to_owned(), |a| a.to_string());
    csv(&[
        proto,
        &addr(src),
        &addr(dst),
        &format!("0x{spi:08x}"),
        esp_encr_name(suite),
        &format!("0x{}", hex(keymat)),
        "NULL",
        "",
    ])
}

impl Session {
    /// The `ikev2_decryption_table` line of the current IKE SA, `None` before its keys exist.
    /// The line holds secrets: write it only where the operator asked for a key log.
    pub fn keylog_ike(&self) -> Option<String> {
        let prot = self.prot.as_ref()?;
        let k = &prot.keys;
        let suite = k.suite();
        Some(ike_line(
            self.spi_i,
            self.spi_r,
            suite.encr(),
            suite.integ(),
            [k.sk_ei(), k.sk_er(), k.sk_ai(), k.sk_ar()],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_line_format() {
        let km = [0xabu8; 36];
        let l = esp_line(
            Some("192.0.2.2".parse().unwrap()),
            Some("192.0.2.1".parse().unwrap()),
            0x1234,
            EspSuite::AesGcm16_256,
            &km,
        );
        let want = format!(
            "\"IPv4\",\"192.0.2.2\",\"192.0.2.1\",\"0x00001234\",\
             \"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{}\",\"NULL\",\"\"",
            "ab".repeat(36)
        );
        assert_eq!(l, want);
        assert!(
            esp_line(None, None, 1, EspSuite::ChaCha20Poly1305, &km)
                .starts_with("\"IPv4\",\"*\",\"*\"")
        );
    }

    #[test]
    fn ike_line_format() {
        let l = ike_line(
            1,
            2,
            EncrAlg::AesGcm16_256,
            None,
            [&[1; 36], &[2; 36], &[], &[]],
        );
        // Checked against tshark 4.0: with these lines it decrypts the demo's IKE messages.
        assert!(l.starts_with("0000000000000001,0000000000000002,0101"));
        assert!(l.ends_with("\"AES-GCM-256 with 16 octet ICV [RFC5282]\",,,\"NONE [RFC4306]\""));
    }
}
