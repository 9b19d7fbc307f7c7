//! Codec tests: golden bytes, hostile input, limits, and proptest round trips.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// One payload with a hand-written generic header (for inputs `emit` refuses to produce).
fn raw_payload(next: u8, critical: bool, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len() + 4).unwrap();
    let mut v = vec![next, if critical { 0x80 } else { 0 }];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A header with a correct Length in front of `chain`.
fn raw_message(first: u8, chain: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    sample_header().emit(PayloadType(first), 0, &mut v);
    v.extend_from_slice(chain);
    set_length(&mut v);
    v
}

fn set_length(msg: &mut [u8]) {
    let len = u32::try_from(msg.len()).unwrap();
    msg[24..28].copy_from_slice(&len.to_be_bytes());
}

fn sample_header() -> Header {
    Header {
        spi_i: 0x0102_0304_0506_0708,
        spi_r: 0,
        exchange: ExchangeType::IKE_SA_INIT,
        flags: Flags {
            initiator: true,
            ..Flags::default()
        },
        message_id: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Golden bytes
// ---------------------------------------------------------------------------------------------

// RFC 7634 Appendix B "IKEv2 Example", "The IKE Message" (also
// /work/shared/vectors/esp-chacha20-rfc7634.json `ikev2_example.ike_message`).
const RFC7634_IKE_MESSAGE: &str = "c0c1c2c3c4c5c6c7 d0d1d2d3d4d5d6d7 2e202500 00000009 00000045
     29000029 1011121314151617 610394701f8d017f7c12924889 6b71bfe25236efd7cdc67066906315b2";
// RFC 7634 Appendix B, "AAD" (json `ikev2_example.aad`).
const RFC7634_AAD: &str = "c0c1c2c3c4c5c6c7d0d1d2d3d4d5d6d72e202500000000090000004529000029";
// RFC 7634 Appendix B, "The Notify Payload" (json `notify_payload_set_window_size_10`).
const RFC7634_NOTIFY: &str = "0000000c000040010000000a";

#[test]
fn golden_rfc7634_ikev2_message_parses_and_reemits_identically() {
    let bytes = hex(RFC7634_IKE_MESSAGE);
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.header.spi_i, 0xc0c1_c2c3_c4c5_c6c7);
    assert_eq!(msg.header.spi_r, 0xd0d1_d2d3_d4d5_d6d7);
    assert_eq!(msg.header.exchange, ExchangeType::INFORMATIONAL);
    assert_eq!(msg.header.message_id, 9);
    // The RFC's example has a flags octet of 0x00 (a request; I bit clear as printed).
    assert_eq!(msg.header.flags, Flags::default());
    let [Payload::Sk(sk)] = msg.payloads.as_slice() else {
        panic!("expected one SK payload: {:?}", msg.payloads)
    };
    assert_eq!(sk.first_payload, PayloadType::NOTIFY);
    assert_eq!(
        sk.body,
        hex("1011121314151617 610394701f8d017f7c12924889 6b71bfe25236efd7cdc67066906315b2")
    );
    assert_eq!(msg.to_bytes().unwrap(), bytes);
}

#[test]
fn golden_rfc7634_sk_layout_gives_the_rfc5282_aad() {
    let bytes = hex(RFC7634_IKE_MESSAGE);
    let layout = locate_encrypted(&bytes).unwrap().unwrap();
    assert_eq!(layout.kind, PayloadType::SK);
    assert_eq!(layout.header, 28..32);
    assert_eq!(layout.body, 32..bytes.len());
    assert_eq!(layout.aad(&bytes), hex(RFC7634_AAD).as_slice());
}

#[test]
fn golden_rfc7634_decrypted_chain_parses_and_reemits() {
    let plain = hex(RFC7634_NOTIFY);
    let chain = parse_chain(PayloadType::NOTIFY, &plain).unwrap();
    assert_eq!(
        chain,
        vec![Payload::Notify(NotifyPayload::new(
            NotifyType::SET_WINDOW_SIZE,
            vec![0, 0, 0, 10]
        ))]
    );
    let mut out = Vec::new();
    assert_eq!(emit_chain(&chain, &mut out).unwrap(), PayloadType::NOTIFY);
    assert_eq!(out, plain);
}

/// IKE_SA_INIT request: SA (IKE: AES-GCM-16/256, PRF-HMAC-SHA2-256, DH 31), KE, Ni, two NAT-D.
fn sample_ike_sa_init() -> Message {
    let ke: Vec<u8> = (0x00..0x20).collect();
    let nonce: Vec<u8> = (0x20..0x40).collect();
    Message {
        header: sample_header(),
        payloads: vec![
            Payload::Sa(SaPayload {
                proposals: vec![Proposal {
                    number: 1,
                    protocol: ProtocolId::IKE,
                    spi: Spi::None,
                    transforms: vec![
                        Transform::with_key_length(TransformType::ENCR, encr::AES_GCM_16, 256),
                        Transform::new(TransformType::PRF, prf::HMAC_SHA2_256),
                        Transform::new(TransformType::DH, dh::CURVE25519),
                    ],
                }],
            }),
            Payload::Ke(KePayload {
                group: dh::CURVE25519,
                data: ke,
            }),
            Payload::Nonce(nonce),
            Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                vec![0xaa; 20],
            )),
            Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                vec![0xbb; 20],
            )),
        ],
    }
}

// Computed by hand from RFC 7296 §3.1-§3.10.
const SAMPLE_IKE_SA_INIT: &str = concat!(
    // §3.1 header: SPIi, SPIr, Next=SA(33), 2.0, IKE_SA_INIT(34), I, Message ID 0, Length 200
    "0102030405060708 0000000000000000 21 20 22 08 00000000 000000c8",
    // §3.3 SA: Next=KE(34), length 40
    "22 00 0028",
    // §3.3.1 proposal: last, length 36, #1, IKE, SPI size 0, 3 transforms
    "00 00 0024 01 01 00 03",
    // §3.3.2 ENCR AES_GCM_16 (20), §3.3.5 Key Length (AF|14) = 256
    "03 00 000c 01 00 0014 800e 0100",
    // PRF HMAC_SHA2_256 (5)
    "03 00 0008 02 00 0005",
    // D-H Curve25519 (31), last transform
    "00 00 0008 04 00 001f",
    // §3.4 KE: Next=Nonce(40), length 40, group 31, reserved, 32 bytes
    "28 00 0028 001f 0000",
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    // §3.9 Nonce: Next=Notify(41), length 36
    "29 00 0024",
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
    // §3.10 Notify NAT_DETECTION_SOURCE_IP (16388): Next=Notify, length 28, proto 0, SPI size 0
    "29 00 001c 00 00 4004 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    // NAT_DETECTION_DESTINATION_IP (16389), last payload
    "00 00 001c 00 00 4005 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
);

#[test]
fn golden_ike_sa_init_emits_hand_computed_bytes_and_parses_back() {
    let msg = sample_ike_sa_init();
    let bytes = msg.to_bytes().unwrap();
    assert_eq!(bytes, hex(SAMPLE_IKE_SA_INIT));
    assert_eq!(bytes.len(), 200);
    assert_eq!(Message::parse(&bytes).unwrap(), msg);
    assert_eq!(locate_encrypted(&bytes).unwrap(), None);
}

#[test]
fn emit_appends_after_existing_bytes() {
    let mut out = vec![0xee; 3];
    sample_ike_sa_init().emit(&mut out).unwrap();
    assert_eq!(&out[..3], &[0xee; 3]);
    assert_eq!(&out[3..], hex(SAMPLE_IKE_SA_INIT).as_slice());
}

#[test]
fn raw_iterator_exposes_payload_ranges_and_bodies() {
    let bytes = hex(SAMPLE_IKE_SA_INIT);
    let raws: Vec<RawPayload<'_>> = PayloadIter::new(&bytes, HEADER_LEN, PayloadType::SA)
        .collect::<Result<_, _>>()
        .unwrap();
    let kinds: Vec<PayloadType> = raws.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            PayloadType::SA,
            PayloadType::KE,
            PayloadType::NONCE,
            PayloadType::NOTIFY,
            PayloadType::NOTIFY
        ]
    );
    assert_eq!(raws[0].range, 28..68);
    assert_eq!(raws[1].range, 68..108);
    assert_eq!(raws[4].range, 172..200);
    assert_eq!(raws[4].next, PayloadType::NONE);
    assert_eq!(raws[2].body, &bytes[112..144]);
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

#[test]
fn header_flags_and_reserved_bits() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[19] = 0xff; // every flag and X bit set
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(
        msg.header.flags,
        Flags {
            initiator: true,
            version: true,
            response: true
        }
    );
    // X bits are not re-emitted.
    assert_eq!(msg.to_bytes().unwrap()[19], 0x38);
    assert_eq!(Flags::from_byte(0x20).to_byte(), 0x20);
}

#[test]
fn header_minor_version_is_ignored() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[17] = 0x2f;
    let info = Header::parse(&bytes).unwrap();
    assert_eq!((info.major_version, info.minor_version), (2, 15));
    assert_eq!(Message::parse(&bytes).unwrap(), sample_ike_sa_init());
}

#[test]
fn header_higher_major_version_is_distinct_and_answerable() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[17] = 0x30;
    let err = Message::parse(&bytes).unwrap_err();
    assert_eq!(err, Error::UnsupportedMajorVersion(3));
    assert_eq!(err.notify_type(), Some(NotifyType::INVALID_MAJOR_VERSION));
    // The header still parses, so the answer can echo SPIs and Message ID.
    let info = Header::parse(&bytes).unwrap();
    assert_eq!(info.header, sample_header());
    assert_eq!(info.check_version(), Err(Error::UnsupportedMajorVersion(3)));
}

#[test]
fn header_ikev1_major_version_is_dropped_silently() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[17] = 0x10;
    let err = Message::parse(&bytes).unwrap_err();
    assert_eq!(err, Error::ObsoleteMajorVersion(1));
    assert_eq!(err.notify_type(), None);
    assert_eq!(err.to_notify(), None);
}

#[test]
fn header_length_field_must_equal_message_length() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[27] = 0xc7;
    assert_eq!(
        Message::parse(&bytes),
        Err(Error::LengthMismatch {
            header: 199,
            actual: 200
        })
    );
    bytes[27] = 0xc8;
    bytes.push(0);
    assert_eq!(
        Message::parse(&bytes),
        Err(Error::LengthMismatch {
            header: 200,
            actual: 201
        })
    );
    assert_eq!(Header::parse(&bytes[..27]), Err(Error::Truncated));
}

#[test]
fn exchange_types_other_than_the_four_are_kept_as_numbers() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[18] = 43; // IKE_INTERMEDIATE (RFC 9242), unknown here
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.header.exchange, ExchangeType(43));
    assert_eq!(msg.header.exchange.name(), None);
    assert_eq!(format!("{:?}", msg.header.exchange), "ExchangeType(43)");
    assert_eq!(format!("{:?}", ExchangeType::IKE_AUTH), "IKE_AUTH");
    assert_eq!(msg.to_bytes().unwrap(), bytes);
}

// ---------------------------------------------------------------------------------------------
// Unknown payloads (RFC 7296 §2.5, §3.2)
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_noncritical_payload_is_kept_and_chain_continues() {
    let mut chain = raw_payload(200, false, b"nonce-data-0123456789");
    chain[0] = PayloadType::NONCE.0; // the unknown payload's Next Payload
    chain.extend(raw_payload(0, false, &[0x55; 16]));
    let bytes = raw_message(200, &chain);
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(
        msg.payloads,
        vec![
            Payload::Unknown {
                kind: PayloadType(200),
                critical: false,
                body: b"nonce-data-0123456789".to_vec()
            },
            Payload::Nonce(vec![0x55; 16]),
        ]
    );
    assert_eq!(msg.to_bytes().unwrap(), bytes);
}

#[test]
fn unknown_critical_payload_is_unsupported_critical_payload_with_its_type() {
    let bytes = raw_message(200, &raw_payload(0, true, b"whatever"));
    let err = Message::parse(&bytes).unwrap_err();
    assert_eq!(err, Error::UnsupportedCriticalPayload(PayloadType(200)));
    assert_eq!(
        err.to_notify(),
        Some(NotifyPayload {
            protocol: ProtocolId(0),
            spi: Spi::None,
            kind: NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
            data: vec![200],
        })
    );
    // Same inside a decrypted chain.
    assert_eq!(
        parse_chain(PayloadType(77), &raw_payload(0, true, b"")),
        Err(Error::UnsupportedCriticalPayload(PayloadType(77)))
    );
}

#[test]
fn critical_bit_on_a_known_payload_is_ignored() {
    let bytes = raw_message(PayloadType::NONCE.0, &raw_payload(0, true, &[1; 16]));
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.payloads, vec![Payload::Nonce(vec![1; 16])]);
}

#[test]
fn emitted_unknown_critical_payload_is_rejected_by_the_parser() {
    let msg = Message {
        header: sample_header(),
        payloads: vec![Payload::Unknown {
            kind: PayloadType(250),
            critical: true,
            body: vec![1, 2, 3],
        }],
    };
    let bytes = msg.to_bytes().unwrap();
    assert_eq!(bytes[29], 0x80);
    assert_eq!(
        Message::parse(&bytes),
        Err(Error::UnsupportedCriticalPayload(PayloadType(250)))
    );
}

// ---------------------------------------------------------------------------------------------
// Errors: lying lengths, bad values
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_at_every_offset_is_an_error() {
    let msgs = [
        hex(SAMPLE_IKE_SA_INIT),
        hex(RFC7634_IKE_MESSAGE),
        every_kind_message().to_bytes().unwrap(),
    ];
    for bytes in &msgs {
        for cut in 0..bytes.len() {
            let short = &bytes[..cut];
            assert!(Message::parse(short).is_err(), "cut at {cut}");
            assert!(locate_encrypted(short).is_err(), "cut at {cut}");
            // Also with the header Length fixed up, so the payload walk itself must notice.
            if cut >= HEADER_LEN {
                let mut fixed = short.to_vec();
                set_length(&mut fixed);
                assert!(Message::parse(&fixed).is_err(), "fixed-up cut at {cut}");
            }
        }
        assert!(Message::parse(bytes).is_ok());
    }
}

#[test]
fn truncated_decrypted_chain_is_an_error() {
    let chain = every_kind_chain();
    let mut bytes = Vec::new();
    let first = emit_chain(&chain, &mut bytes).unwrap();
    for cut in 0..bytes.len() {
        assert!(parse_chain(first, &bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert_eq!(parse_chain(first, &bytes).unwrap(), chain);
}

#[test]
fn payload_length_beyond_message_is_bad_length() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    // Last payload (Notify at 172) claims 29 bytes where 28 remain.
    bytes[175] = 29;
    assert_eq!(Message::parse(&bytes), Err(Error::BadLength(Part::Payload)));
    // First payload claims more than the whole message.
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[30..32].copy_from_slice(&0xffffu16.to_be_bytes());
    assert_eq!(Message::parse(&bytes), Err(Error::BadLength(Part::Payload)));
}

#[test]
fn payload_length_below_generic_header_is_bad_length() {
    for len in 0..4u8 {
        let mut bytes = hex(SAMPLE_IKE_SA_INIT);
        bytes[31] = len;
        bytes[30] = 0;
        assert_eq!(
            Message::parse(&bytes),
            Err(Error::BadLength(Part::Payload)),
            "len {len}"
        );
    }
}

#[test]
fn bytes_after_the_last_payload_are_bad_length() {
    let mut chain = hex(SAMPLE_IKE_SA_INIT)[HEADER_LEN..].to_vec();
    chain.extend_from_slice(&[0, 0, 0, 4]);
    let bytes = raw_message(PayloadType::SA.0, &chain);
    assert_eq!(Message::parse(&bytes), Err(Error::BadLength(Part::Message)));
    assert_eq!(
        parse_chain(PayloadType::SA, &chain),
        Err(Error::BadLength(Part::Message))
    );
}

#[test]
fn sk_must_be_last_and_never_nested() {
    // Bytes after the SK payload.
    let mut bytes = hex(RFC7634_IKE_MESSAGE);
    bytes.extend_from_slice(&[0, 0, 0, 4]);
    set_length(&mut bytes);
    assert_eq!(Message::parse(&bytes), Err(Error::MisplacedEncrypted));
    assert_eq!(locate_encrypted(&bytes), Err(Error::MisplacedEncrypted));
    // SK in a decrypted chain.
    let inner = raw_payload(PayloadType::NOTIFY.0, false, &[0; 20]);
    assert_eq!(
        parse_chain(PayloadType::SK, &inner),
        Err(Error::MisplacedEncrypted)
    );
    assert_eq!(
        parse_chain(PayloadType::SKF, &inner),
        Err(Error::MisplacedEncrypted)
    );
    // Emit refuses both.
    let sk = Payload::Sk(SkPayload {
        first_payload: PayloadType::NOTIFY,
        body: vec![0; 24],
    });
    let mut out = vec![9];
    assert_eq!(
        emit_chain(std::slice::from_ref(&sk), &mut out),
        Err(Error::MisplacedEncrypted)
    );
    assert_eq!(out, [9]);
    let msg = Message {
        header: sample_header(),
        payloads: vec![sk, Payload::VendorId(vec![1])],
    };
    assert_eq!(msg.to_bytes(), Err(Error::MisplacedEncrypted));
}

/// The SA payload body of [`SAMPLE_IKE_SA_INIT`] starts at 32; the proposal at 32, its
/// transforms at 40, 52, 60.
#[test]
fn transform_length_below_eight_is_bad_length() {
    for len in [0u8, 4, 7] {
        let mut bytes = hex(SAMPLE_IKE_SA_INIT);
        bytes[55] = len; // second transform's length
        assert_eq!(
            Message::parse(&bytes),
            Err(Error::BadLength(Part::Transform)),
            "len {len}"
        );
    }
}

#[test]
fn transform_and_proposal_lengths_that_overrun_are_errors() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[63] = 9; // last transform runs one byte past the proposal
    assert_eq!(
        Message::parse(&bytes),
        Err(Error::BadLength(Part::Transform))
    );
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[35] = 37; // proposal runs one byte past the SA payload
    assert_eq!(
        Message::parse(&bytes),
        Err(Error::BadLength(Part::Proposal))
    );
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[35] = 7; // proposal shorter than its own header
    assert_eq!(
        Message::parse(&bytes),
        Err(Error::BadLength(Part::Proposal))
    );
}

#[test]
fn attribute_length_overrun_and_key_length_misuse_are_bad_attribute() {
    let sa_body = |attrs: &[u8]| {
        let mut t = vec![0, 0, 0, 0, 1, 0, 0, 20];
        t.extend_from_slice(attrs);
        let tlen = u16::try_from(t.len()).unwrap();
        t[2..4].copy_from_slice(&tlen.to_be_bytes());
        let mut p = vec![0, 0, 0, 0, 1, 1, 0, 1];
        p.extend_from_slice(&t);
        let plen = u16::try_from(p.len()).unwrap();
        p[2..4].copy_from_slice(&plen.to_be_bytes());
        p
    };
    // TLV attribute claiming 5 value bytes with 2 present.
    assert_eq!(
        SaPayload::parse(&sa_body(&[0x00, 0x20, 0x00, 0x05, 1, 2])),
        Err(Error::BadAttribute)
    );
    // Attribute header cut short.
    assert_eq!(
        SaPayload::parse(&sa_body(&[0x80, 0x0e, 0x01])),
        Err(Error::BadAttribute)
    );
    // Key Length in TLV form.
    assert_eq!(
        SaPayload::parse(&sa_body(&[0x00, 0x0e, 0x00, 0x02, 0x01, 0x00])),
        Err(Error::BadAttribute)
    );
    // Key Length twice.
    assert_eq!(
        SaPayload::parse(&sa_body(&[0x80, 0x0e, 0x01, 0x00, 0x80, 0x0e, 0x00, 0x80])),
        Err(Error::BadAttribute)
    );
    // Unknown attributes are kept, in both formats.
    let sa = SaPayload::parse(&sa_body(&[
        0x80, 0x0e, 0x00, 0x80, 0x80, 0x21, 0x12, 0x34, 0x00, 0x22, 0x00, 0x01, 0xab,
    ]))
    .unwrap();
    let t = &sa.proposals[0].transforms[0];
    assert_eq!(t.key_length, Some(128));
    assert_eq!(
        t.attributes,
        vec![
            Attribute::Tv {
                kind: 0x21,
                value: 0x1234
            },
            Attribute::Tlv {
                kind: 0x22,
                value: vec![0xab]
            }
        ]
    );
}

#[test]
fn substructure_and_count_mismatches_are_errors() {
    // Num Transforms says 4, three are present.
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[39] = 4;
    assert!(matches!(
        Message::parse(&bytes),
        Err(Error::BadSubstructure | Error::BadCount(Part::Transform))
    ));
    // Num Transforms says 2, three are present.
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[39] = 2;
    assert!(Message::parse(&bytes).is_err());
    // Num Transforms 0.
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[39] = 0;
    assert_eq!(
        Message::parse(&bytes),
        Err(Error::BadCount(Part::Transform))
    );
    // Proposal says "more follow" but the SA ends.
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[32] = 2;
    assert_eq!(Message::parse(&bytes), Err(Error::BadSubstructure));
    // Transform Last Substruc neither 0 nor 3.
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[40] = 1;
    assert_eq!(Message::parse(&bytes), Err(Error::BadSubstructure));
}

#[test]
fn spi_sizes_outside_0_4_8_are_rejected() {
    let mut bytes = hex(SAMPLE_IKE_SA_INIT);
    bytes[38] = 3;
    assert_eq!(Message::parse(&bytes), Err(Error::BadSpiSize(3)));
    assert_eq!(
        NotifyPayload::parse(&[3, 2, 0x40, 0x00, 1, 2]),
        Err(Error::BadSpiSize(2))
    );
    assert_eq!(
        DeletePayload::parse(&[3, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]),
        Err(Error::BadSpiSize(8))
    );
}

#[test]
fn delete_spi_count_must_match() {
    assert_eq!(
        DeletePayload::parse(&[3, 4, 0, 2, 0, 0, 1, 0]),
        Err(Error::BadCount(Part::Spi))
    );
    assert_eq!(
        DeletePayload::parse(&[1, 0, 0, 1]),
        Err(Error::BadCount(Part::Spi))
    );
    assert_eq!(
        DeletePayload::parse(&[3, 4, 0, 2, 0, 0, 1, 0, 0, 0, 1, 1]).unwrap(),
        DeletePayload {
            protocol: ProtocolId::ESP,
            spis: vec![0x100, 0x101]
        }
    );
    assert_eq!(
        DeletePayload::parse(&[1, 0, 0, 0]).unwrap(),
        DeletePayload {
            protocol: ProtocolId::IKE,
            spis: vec![]
        }
    );
}

#[test]
fn nonce_length_bounds() {
    for (n, ok) in [(15, false), (16, true), (256, true), (257, false)] {
        let bytes = raw_message(PayloadType::NONCE.0, &raw_payload(0, false, &vec![7; n]));
        assert_eq!(
            Message::parse(&bytes).is_ok(),
            ok,
            "nonce of {n} bytes: {:?}",
            Message::parse(&bytes)
        );
        let msg = Message {
            header: sample_header(),
            payloads: vec![Payload::Nonce(vec![7; n])],
        };
        assert_eq!(msg.to_bytes().is_ok(), ok);
        if !ok {
            assert_eq!(Message::parse(&bytes), Err(Error::BadNonceLength(n)));
        }
    }
}

#[test]
fn identification_data_must_fit_address_types() {
    assert_eq!(
        Identity::parse(&[1, 0, 0, 0, 10, 0, 0, 1, 5]),
        Err(Error::BadIdentification)
    );
    assert_eq!(
        Identity::parse(&[5, 0, 0, 0, 1, 2, 3, 4]),
        Err(Error::BadIdentification)
    );
    assert_eq!(
        Identity::parse(&[1, 9, 9, 9, 10, 0, 0, 1]).unwrap(),
        Identity::Ipv4(Ipv4Addr::new(10, 0, 0, 1))
    );
    assert_eq!(
        Identity::parse(&[2, 0, 0, 0, b'a', b'.', b'b']).unwrap(),
        Identity::Fqdn(b"a.b".to_vec())
    );
    assert_eq!(
        Identity::parse(&[9, 0, 0, 0, 0x30, 0x00]).unwrap(),
        Identity::Other {
            id_type: id_type::DER_ASN1_DN,
            data: vec![0x30, 0]
        }
    );
    assert_eq!(Identity::parse(&[1, 0, 0]), Err(Error::Truncated));
}

#[test]
fn traffic_selector_lengths_and_counts() {
    let v4 = |len: u16| {
        let mut b = vec![1, 0, 0, 0, 7, 6];
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0xff, 0xff, 10, 0, 0, 0, 10, 0, 0, 255]);
        b
    };
    assert_eq!(
        TsPayload::parse(&v4(16)).unwrap().selectors,
        vec![TrafficSelector::Ipv4(TsRange {
            ip_protocol: 6,
            start_port: 0,
            end_port: 0xffff,
            start_addr: Ipv4Addr::new(10, 0, 0, 0),
            end_addr: Ipv4Addr::new(10, 0, 0, 255),
        })]
    );
    assert_eq!(
        TsPayload::parse(&v4(17)),
        Err(Error::BadLength(Part::TrafficSelector))
    );
    let mut short = v4(12);
    short.truncate(4 + 12);
    assert_eq!(TsPayload::parse(&short), Err(Error::BadTrafficSelector));
    assert_eq!(
        TsPayload::parse(&v4(3)),
        Err(Error::BadLength(Part::TrafficSelector))
    );
    let mut two = v4(16);
    two[0] = 2;
    assert_eq!(
        TsPayload::parse(&two),
        Err(Error::BadCount(Part::TrafficSelector))
    );
    let mut zero = v4(16);
    zero[0] = 0;
    assert_eq!(
        TsPayload::parse(&zero),
        Err(Error::BadCount(Part::TrafficSelector))
    );
    // An unknown TS type is kept raw.
    let other = [1, 0, 0, 0, 10, 0, 0, 6, 0xab, 0xcd];
    assert_eq!(
        TsPayload::parse(&other).unwrap().selectors,
        vec![TrafficSelector::Other {
            ts_type: 10,
            octet1: 0,
            data: vec![0xab, 0xcd]
        }]
    );
}

#[test]
fn skf_fragment_numbers_are_checked() {
    assert_eq!(
        SkfPayload::parse(PayloadType::NONE, &[0, 0, 0, 2]),
        Err(Error::BadFragmentNumber)
    );
    assert_eq!(
        SkfPayload::parse(PayloadType::NONE, &[0, 3, 0, 2]),
        Err(Error::BadFragmentNumber)
    );
    assert_eq!(
        SkfPayload::parse(PayloadType::NONE, &[0, 1]),
        Err(Error::Truncated)
    );
    let skf = SkfPayload::parse(PayloadType::IDI, &[0, 1, 0, 2, 9, 9]).unwrap();
    assert_eq!(
        skf,
        SkfPayload {
            first_payload: PayloadType::IDI,
            fragment_number: 1,
            total_fragments: 2,
            body: vec![9, 9]
        }
    );
}

#[test]
fn skf_layout_includes_fragment_fields_in_the_aad() {
    let msg = Message {
        header: sample_header(),
        payloads: vec![
            Payload::VendorId(b"iketcp".to_vec()),
            Payload::Skf(SkfPayload {
                first_payload: PayloadType::IDI,
                fragment_number: 1,
                total_fragments: 3,
                body: vec![0x5a; 40],
            }),
        ],
    };
    let bytes = msg.to_bytes().unwrap();
    let layout = locate_encrypted(&bytes).unwrap().unwrap();
    assert_eq!(layout.kind, PayloadType::SKF);
    // Header 28, Vendor ID 4 + 6, then SKF generic header + 4 bytes of fragment fields.
    assert_eq!(layout.header, 38..46);
    assert_eq!(layout.body, 46..86);
    assert_eq!(&bytes[42..46], &[0, 1, 0, 3]);
    assert_eq!(&bytes[layout.body.clone()], &[0x5a; 40]);
    assert_eq!(layout.aad(&bytes), &bytes[..46]);
    assert_eq!(Message::parse(&bytes).unwrap(), msg);
}

#[test]
fn oversized_messages_are_refused() {
    assert_eq!(
        Message::parse(&vec![0; MAX_MESSAGE_LEN + 1]),
        Err(Error::TooLong)
    );
    let msg = Message {
        header: sample_header(),
        payloads: vec![
            Payload::VendorId(vec![0; 40_000]),
            Payload::VendorId(vec![0; 40_000]),
        ],
    };
    let mut out = vec![1, 2];
    assert_eq!(msg.emit(&mut out), Err(Error::TooLong));
    assert_eq!(out, [1, 2], "out restored on error");
    let one = Message {
        header: sample_header(),
        payloads: vec![Payload::VendorId(vec![0; 70_000])],
    };
    assert_eq!(one.to_bytes(), Err(Error::TooLong));
}

#[test]
fn emit_refuses_unrepresentable_values() {
    let bad = [
        Payload::Unknown {
            kind: PayloadType::NONCE,
            critical: false,
            body: vec![0; 16],
        },
        Payload::Unknown {
            kind: PayloadType::NONE,
            critical: false,
            body: vec![],
        },
        Payload::IdI(Identity::Other {
            id_type: id_type::FQDN,
            data: vec![],
        }),
        Payload::TsI(TsPayload {
            selectors: vec![TrafficSelector::Other {
                ts_type: ts_type::IPV4_ADDR_RANGE,
                octet1: 0,
                data: vec![],
            }],
        }),
        Payload::Sa(SaPayload {
            proposals: vec![Proposal {
                number: 1,
                protocol: ProtocolId::ESP,
                spi: Spi::U32(1),
                transforms: vec![Transform {
                    attributes: vec![Attribute::Tv {
                        kind: ATTR_KEY_LENGTH,
                        value: 128,
                    }],
                    ..Transform::new(TransformType::ENCR, encr::AES_CBC)
                }],
            }],
        }),
        Payload::Cp(CpPayload {
            cfg_type: CfgType::REQUEST,
            attributes: vec![CfgAttribute {
                kind: 0x8001,
                value: vec![],
            }],
        }),
    ];
    for p in bad {
        let mut out = Vec::new();
        assert_eq!(
            emit_chain(std::slice::from_ref(&p), &mut out),
            Err(Error::Unrepresentable),
            "{p:?}"
        );
        assert!(out.is_empty());
    }
    // Empty SA, empty proposal, empty TS, bad fragment numbers.
    let bad_counts = [
        (
            Payload::Sa(SaPayload { proposals: vec![] }),
            Error::BadCount(Part::Proposal),
        ),
        (
            Payload::TsR(TsPayload { selectors: vec![] }),
            Error::BadCount(Part::TrafficSelector),
        ),
        (
            Payload::Sa(SaPayload {
                proposals: vec![Proposal {
                    number: 1,
                    protocol: ProtocolId::IKE,
                    spi: Spi::None,
                    transforms: vec![],
                }],
            }),
            Error::BadCount(Part::Transform),
        ),
    ];
    for (p, e) in bad_counts {
        assert_eq!(emit_chain(&[p], &mut Vec::new()), Err(e));
    }
    let skf = Message {
        header: sample_header(),
        payloads: vec![Payload::Skf(SkfPayload {
            first_payload: PayloadType::NONE,
            fragment_number: 0,
            total_fragments: 1,
            body: vec![],
        })],
    };
    assert_eq!(skf.to_bytes(), Err(Error::BadFragmentNumber));
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn more_than_max_payloads_is_too_many() {
    let build = |n: usize| {
        let mut chain = Vec::new();
        for i in 0..n {
            let next = if i + 1 == n {
                0
            } else {
                PayloadType::VENDOR_ID.0
            };
            chain.extend(raw_payload(next, false, &[i as u8]));
        }
        raw_message(PayloadType::VENDOR_ID.0, &chain)
    };
    assert_eq!(
        Message::parse(&build(MAX_PAYLOADS)).unwrap().payloads.len(),
        MAX_PAYLOADS
    );
    assert_eq!(
        Message::parse(&build(MAX_PAYLOADS + 1)),
        Err(Error::TooMany(Part::Payload))
    );
    // Unknown payloads count too.
    let mut chain = Vec::new();
    for i in 0..=MAX_PAYLOADS {
        let next = if i == MAX_PAYLOADS { 0 } else { 222 };
        chain.extend(raw_payload(next, false, &[]));
    }
    assert_eq!(
        parse_chain(PayloadType(222), &chain),
        Err(Error::TooMany(Part::Payload))
    );
    let msg = Message {
        header: sample_header(),
        payloads: vec![Payload::VendorId(vec![]); MAX_PAYLOADS + 1],
    };
    assert_eq!(msg.to_bytes(), Err(Error::TooMany(Part::Payload)));
}

/// An SA body with `proposals` proposals of `transforms` transforms each.
fn raw_sa_body(proposals: usize, transforms: usize) -> Vec<u8> {
    let mut sa = Vec::new();
    for p in 0..proposals {
        let last = if p + 1 == proposals { 0 } else { 2 };
        let len = u16::try_from(8 + 8 * transforms).unwrap();
        sa.extend_from_slice(&[last, 0]);
        sa.extend_from_slice(&len.to_be_bytes());
        sa.extend_from_slice(&[(p + 1) as u8, 3, 0, transforms as u8]);
        for t in 0..transforms {
            let last = if t + 1 == transforms { 0 } else { 3 };
            sa.extend_from_slice(&[last, 0, 0, 8, 1, 0, 0, 20]);
        }
    }
    sa
}

#[test]
fn more_than_max_proposals_is_too_many() {
    let ok = SaPayload::parse(&raw_sa_body(MAX_PROPOSALS, 1)).unwrap();
    assert_eq!(ok.proposals.len(), MAX_PROPOSALS);
    assert_eq!(
        SaPayload::parse(&raw_sa_body(MAX_PROPOSALS + 1, 1)),
        Err(Error::TooMany(Part::Proposal))
    );
    let sa = SaPayload {
        proposals: vec![ok.proposals[0].clone(); MAX_PROPOSALS + 1],
    };
    assert_eq!(
        emit_chain(&[Payload::Sa(sa)], &mut Vec::new()),
        Err(Error::TooMany(Part::Proposal))
    );
}

#[test]
fn more_than_max_transforms_is_too_many() {
    let ok = SaPayload::parse(&raw_sa_body(1, MAX_TRANSFORMS)).unwrap();
    assert_eq!(ok.proposals[0].transforms.len(), MAX_TRANSFORMS);
    assert_eq!(
        SaPayload::parse(&raw_sa_body(1, MAX_TRANSFORMS + 1)),
        Err(Error::TooMany(Part::Transform))
    );
    let mut p = ok.proposals[0].clone();
    p.transforms.push(p.transforms[0].clone());
    assert_eq!(
        emit_chain(
            &[Payload::Sa(SaPayload { proposals: vec![p] })],
            &mut Vec::new()
        ),
        Err(Error::TooMany(Part::Transform))
    );
}

#[test]
fn more_than_max_attributes_is_too_many() {
    let mut t = Transform::new(TransformType::ENCR, encr::AES_CBC);
    t.attributes = vec![Attribute::Tv { kind: 99, value: 1 }; MAX_ATTRIBUTES];
    let sa = |t: Transform| SaPayload {
        proposals: vec![Proposal {
            number: 1,
            protocol: ProtocolId::IKE,
            spi: Spi::None,
            transforms: vec![t],
        }],
    };
    let mut body = Vec::new();
    sa(t.clone()).emit(&mut body).unwrap();
    assert_eq!(SaPayload::parse(&body).unwrap(), sa(t.clone()));
    // One more, by hand: append a TV attribute and fix the three lengths.
    body.extend_from_slice(&[0x80, 99, 0, 1]);
    let plen = u16::try_from(body.len()).unwrap();
    body[2..4].copy_from_slice(&plen.to_be_bytes());
    body[10..12].copy_from_slice(&(plen - 8).to_be_bytes());
    assert_eq!(
        SaPayload::parse(&body),
        Err(Error::TooMany(Part::Attribute))
    );
    t.key_length = Some(128);
    assert_eq!(
        sa(t).emit(&mut Vec::new()),
        Err(Error::TooMany(Part::Attribute))
    );
}

#[test]
fn more_than_max_selectors_is_too_many() {
    let sel = TrafficSelector::Ipv4(TsRange {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start_addr: Ipv4Addr::UNSPECIFIED,
        end_addr: Ipv4Addr::BROADCAST,
    });
    let mut ts = TsPayload {
        selectors: vec![sel.clone(); MAX_SELECTORS],
    };
    let mut body = Vec::new();
    ts.emit(&mut body).unwrap();
    assert_eq!(TsPayload::parse(&body).unwrap(), ts);
    ts.selectors.push(sel);
    assert_eq!(
        ts.emit(&mut Vec::new()),
        Err(Error::TooMany(Part::TrafficSelector))
    );
    let mut body = Vec::new();
    TsPayload {
        selectors: ts.selectors[..1].to_vec(),
    }
    .emit(&mut body)
    .unwrap();
    let one = body[4..].to_vec();
    let mut big = vec![(MAX_SELECTORS + 1) as u8, 0, 0, 0];
    for _ in 0..=MAX_SELECTORS {
        big.extend_from_slice(&one);
    }
    assert_eq!(
        TsPayload::parse(&big),
        Err(Error::TooMany(Part::TrafficSelector))
    );
}

#[test]
fn more_than_max_cfg_attributes_is_too_many() {
    let mut body = vec![1, 0, 0, 0];
    for _ in 0..=MAX_CFG_ATTRIBUTES {
        body.extend_from_slice(&[0, 3, 0, 0]);
    }
    assert_eq!(
        CpPayload::parse(&body),
        Err(Error::TooMany(Part::CfgAttribute))
    );
    assert_eq!(
        CpPayload::parse(&body[..body.len() - 4])
            .unwrap()
            .attributes
            .len(),
        MAX_CFG_ATTRIBUTES
    );
    // A value that overruns the payload.
    assert_eq!(
        CpPayload::parse(&[1, 0, 0, 0, 0, 1, 0, 4, 10, 0]),
        Err(Error::BadLength(Part::CfgAttribute))
    );
}

// ---------------------------------------------------------------------------------------------
// Error mapping and registries
// ---------------------------------------------------------------------------------------------

#[test]
fn errors_map_to_invalid_syntax_unless_specific() {
    for e in [
        Error::Truncated,
        Error::TooLong,
        Error::LengthMismatch {
            header: 1,
            actual: 2,
        },
        Error::BadLength(Part::Payload),
        Error::BadCount(Part::Spi),
        Error::TooMany(Part::Proposal),
        Error::BadSubstructure,
        Error::BadAttribute,
        Error::BadSpiSize(3),
        Error::BadNonceLength(3),
        Error::BadIdentification,
        Error::BadTrafficSelector,
        Error::MisplacedEncrypted,
        Error::BadFragmentNumber,
    ] {
        assert_eq!(e.notify_type(), Some(NotifyType::INVALID_SYNTAX), "{e}");
        assert_eq!(NotifyType::INVALID_SYNTAX.0, 7);
        let n = e.to_notify().unwrap();
        assert!(n.data.is_empty() && n.spi == Spi::None);
    }
    assert_eq!(
        Error::UnsupportedCriticalPayload(PayloadType(99)).notify_type(),
        Some(NotifyType(1))
    );
    assert_eq!(
        Error::UnsupportedMajorVersion(4).notify_type(),
        Some(NotifyType(5))
    );
    assert_eq!(Error::Unrepresentable.notify_type(), None);
}

#[test]
fn notify_type_numbers() {
    let table = [
        (NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, 1),
        (NotifyType::INVALID_IKE_SPI, 4),
        (NotifyType::INVALID_MAJOR_VERSION, 5),
        (NotifyType::INVALID_SYNTAX, 7),
        (NotifyType::INVALID_MESSAGE_ID, 9),
        (NotifyType::INVALID_SPI, 11),
        (NotifyType::NO_PROPOSAL_CHOSEN, 14),
        (NotifyType::INVALID_KE_PAYLOAD, 17),
        (NotifyType::AUTHENTICATION_FAILED, 24),
        (NotifyType::SINGLE_PAIR_REQUIRED, 34),
        (NotifyType::NO_ADDITIONAL_SAS, 35),
        (NotifyType::INTERNAL_ADDRESS_FAILURE, 36),
        (NotifyType::FAILED_CP_REQUIRED, 37),
        (NotifyType::TS_UNACCEPTABLE, 38),
        (NotifyType::INVALID_SELECTORS, 39),
        (NotifyType::TEMPORARY_FAILURE, 43),
        (NotifyType::CHILD_SA_NOT_FOUND, 44),
        (NotifyType::INITIAL_CONTACT, 16384),
        (NotifyType::SET_WINDOW_SIZE, 16385),
        (NotifyType::ADDITIONAL_TS_POSSIBLE, 16386),
        (NotifyType::IPCOMP_SUPPORTED, 16387),
        (NotifyType::NAT_DETECTION_SOURCE_IP, 16388),
        (NotifyType::NAT_DETECTION_DESTINATION_IP, 16389),
        (NotifyType::COOKIE, 16390),
        (NotifyType::USE_TRANSPORT_MODE, 16391),
        (NotifyType::HTTP_CERT_LOOKUP_SUPPORTED, 16392),
        (NotifyType::REKEY_SA, 16393),
        (NotifyType::ESP_TFC_PADDING_NOT_SUPPORTED, 16394),
        (NotifyType::NON_FIRST_FRAGMENTS_ALSO, 16395),
        (NotifyType::MOBIKE_SUPPORTED, 16396),
        (NotifyType::UPDATE_SA_ADDRESSES, 16400),
        (NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, 16430),
        (NotifyType::SIGNATURE_HASH_ALGORITHMS, 16431),
        (NotifyType::PUZZLE, 16434),
    ];
    for (t, n) in table {
        assert_eq!(t.0, n, "{t:?}");
        assert_eq!(t.is_error(), n < 16384);
    }
    assert_eq!(
        format!("{:?}", NotifyType(16388)),
        "NAT_DETECTION_SOURCE_IP"
    );
    assert_eq!(format!("{:?}", NotifyType(40000)), "NotifyType(40000)");
}

// ---------------------------------------------------------------------------------------------
// A message with every payload kind
// ---------------------------------------------------------------------------------------------

fn every_kind_chain() -> Vec<Payload> {
    vec![
        Payload::Sa(SaPayload {
            proposals: vec![
                Proposal {
                    number: 1,
                    protocol: ProtocolId::ESP,
                    spi: Spi::U32(0x1234_5678),
                    transforms: vec![
                        Transform::with_key_length(TransformType::ENCR, encr::AES_GCM_16, 128),
                        Transform::new(TransformType::ESN, esn::NO),
                    ],
                },
                Proposal {
                    number: 2,
                    protocol: ProtocolId::IKE,
                    spi: Spi::U64(7),
                    transforms: vec![Transform {
                        attributes: vec![Attribute::Tlv {
                            kind: 300,
                            value: vec![1, 2, 3],
                        }],
                        ..Transform::new(TransformType::ENCR, encr::CHACHA20_POLY1305)
                    }],
                },
            ],
        }),
        Payload::Ke(KePayload {
            group: dh::ECP_256,
            data: vec![4; 64],
        }),
        Payload::IdI(Identity::Rfc822(b"alice@example.com".to_vec())),
        Payload::IdR(Identity::Ipv6(Ipv6Addr::LOCALHOST)),
        Payload::Cert(CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![0x30, 0x82, 0, 0],
        }),
        Payload::CertReq(CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![0x11; 20],
        }),
        Payload::Auth(AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: vec![0x22; 32],
        }),
        Payload::Nonce(vec![0x33; 16]),
        Payload::Notify(NotifyPayload {
            protocol: ProtocolId::ESP,
            spi: Spi::U32(0xdead_beef),
            kind: NotifyType::REKEY_SA,
            data: vec![],
        }),
        Payload::Delete(DeletePayload {
            protocol: ProtocolId::ESP,
            spis: vec![1000, 1001],
        }),
        Payload::VendorId(b"iketcp".to_vec()),
        Payload::TsI(TsPayload {
            selectors: vec![TrafficSelector::Ipv4(TsRange {
                ip_protocol: 17,
                start_port: 500,
                end_port: 4500,
                start_addr: Ipv4Addr::new(192, 0, 2, 1),
                end_addr: Ipv4Addr::new(192, 0, 2, 9),
            })],
        }),
        Payload::TsR(TsPayload {
            selectors: vec![TrafficSelector::Ipv6(TsRange {
                ip_protocol: 0,
                start_port: 0,
                end_port: 65535,
                start_addr: Ipv6Addr::UNSPECIFIED,
                end_addr: Ipv6Addr::from([0xff; 16]),
            })],
        }),
        Payload::Cp(CpPayload {
            cfg_type: CfgType::REQUEST,
            attributes: vec![
                CfgAttribute {
                    kind: cfg_attr::INTERNAL_IP4_ADDRESS,
                    value: vec![],
                },
                CfgAttribute {
                    kind: cfg_attr::INTERNAL_IP6_ADDRESS,
                    value: vec![0; 17],
                },
            ],
        }),
        Payload::Eap(vec![1, 5, 0, 5, 1]),
        Payload::Unknown {
            kind: PayloadType(150),
            critical: false,
            body: vec![0xcc; 3],
        },
    ]
}

fn every_kind_message() -> Message {
    let mut payloads = every_kind_chain();
    payloads.push(Payload::Sk(SkPayload {
        first_payload: PayloadType::IDI,
        body: vec![0x44; 48],
    }));
    Message {
        header: Header {
            exchange: ExchangeType::IKE_AUTH,
            message_id: 1,
            spi_r: 0x1111_2222_3333_4444,
            ..sample_header()
        },
        payloads,
    }
}

#[test]
fn every_payload_kind_round_trips() {
    let msg = every_kind_message();
    let bytes = msg.to_bytes().unwrap();
    assert_eq!(Message::parse(&bytes).unwrap(), msg);
    let layout = locate_encrypted(&bytes).unwrap().unwrap();
    assert_eq!(layout.body.len(), 48);
    assert_eq!(layout.header.len(), 4);
    assert_eq!(bytes[layout.header.start], PayloadType::IDI.0);
}

#[test]
fn identity_emit_is_the_received_body() {
    let bytes = every_kind_message().to_bytes().unwrap();
    let raw = PayloadIter::new(&bytes, HEADER_LEN, PayloadType::SA)
        .map(Result::unwrap)
        .find(|r| r.kind == PayloadType::IDI)
        .unwrap();
    let mut body = Vec::new();
    Identity::Rfc822(b"alice@example.com".to_vec())
        .emit(&mut body)
        .unwrap();
    assert_eq!(raw.body, body.as_slice());
}

// ---------------------------------------------------------------------------------------------
// proptest: round trips and hostile input
// ---------------------------------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn arb_spi() -> impl Strategy<Value = Spi> {
    prop_oneof![
        Just(Spi::None),
        any::<u32>().prop_map(Spi::U32),
        any::<u64>().prop_map(Spi::U64),
    ]
}

fn arb_attribute() -> impl Strategy<Value = Attribute> {
    let kind = (0u16..0x8000).prop_filter("not Key Length", |k| *k != ATTR_KEY_LENGTH);
    prop_oneof![
        (kind.clone(), any::<u16>()).prop_map(|(kind, value)| Attribute::Tv { kind, value }),
        (kind, bytes(8)).prop_map(|(kind, value)| Attribute::Tlv { kind, value }),
    ]
}

fn arb_transform() -> impl Strategy<Value = Transform> {
    (
        any::<u8>(),
        any::<u16>(),
        option::of(any::<u16>()),
        vec(arb_attribute(), 0..3),
    )
        .prop_map(|(kind, id, key_length, attributes)| Transform {
            kind: TransformType(kind),
            id,
            key_length,
            attributes,
        })
}

fn arb_sa() -> impl Strategy<Value = SaPayload> {
    let proposal = (
        any::<u8>(),
        any::<u8>(),
        arb_spi(),
        vec(arb_transform(), 1..5),
    )
        .prop_map(|(number, protocol, spi, transforms)| Proposal {
            number,
            protocol: ProtocolId(protocol),
            spi,
            transforms,
        });
    vec(proposal, 1..4).prop_map(|proposals| SaPayload { proposals })
}

fn arb_identity() -> impl Strategy<Value = Identity> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| Identity::Ipv4(Ipv4Addr::from(a))),
        bytes(40).prop_map(Identity::Fqdn),
        bytes(40).prop_map(Identity::Rfc822),
        any::<[u8; 16]>().prop_map(|a| Identity::Ipv6(Ipv6Addr::from(a))),
        bytes(40).prop_map(Identity::KeyId),
        (any::<u8>(), bytes(40))
            .prop_filter("typed ID types", |(t, _)| !matches!(t, 1 | 2 | 3 | 5 | 11))
            .prop_map(|(id_type, data)| Identity::Other { id_type, data }),
    ]
}

fn arb_selector() -> impl Strategy<Value = TrafficSelector> {
    prop_oneof![
        (any::<(u8, u16, u16)>(), any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(
            |((p, s, e), a, b)| TrafficSelector::Ipv4(TsRange {
                ip_protocol: p,
                start_port: s,
                end_port: e,
                start_addr: Ipv4Addr::from(a),
                end_addr: Ipv4Addr::from(b),
            })
        ),
        (
            any::<(u8, u16, u16)>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>()
        )
            .prop_map(|((p, s, e), a, b)| TrafficSelector::Ipv6(TsRange {
                ip_protocol: p,
                start_port: s,
                end_port: e,
                start_addr: Ipv6Addr::from(a),
                end_addr: Ipv6Addr::from(b),
            })),
        (any::<u8>(), any::<u8>(), bytes(12))
            .prop_filter("typed TS types", |(t, _, _)| !matches!(t, 7 | 8))
            .prop_map(|(ts_type, octet1, data)| TrafficSelector::Other {
                ts_type,
                octet1,
                data
            }),
    ]
}

fn arb_unknown_kind() -> impl Strategy<Value = PayloadType> {
    (1u8..=255)
        .prop_map(PayloadType)
        .prop_filter("unknown types", |t| !t.is_known())
}

/// Any payload that may appear in a decrypted chain (everything but SK/SKF).
fn arb_inner_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        arb_sa().prop_map(Payload::Sa),
        (any::<u16>(), bytes(64)).prop_map(|(group, data)| Payload::Ke(KePayload { group, data })),
        arb_identity().prop_map(Payload::IdI),
        arb_identity().prop_map(Payload::IdR),
        (any::<u8>(), bytes(64)).prop_map(|(e, data)| Payload::Cert(CertPayload {
            encoding: CertEncoding(e),
            data
        })),
        (any::<u8>(), bytes(64)).prop_map(|(e, data)| Payload::CertReq(CertPayload {
            encoding: CertEncoding(e),
            data
        })),
        (any::<u8>(), bytes(64)).prop_map(|(m, data)| Payload::Auth(AuthPayload {
            method: AuthMethod(m),
            data
        })),
        vec(any::<u8>(), NONCE_LEN_MIN..=NONCE_LEN_MAX).prop_map(Payload::Nonce),
        (any::<u8>(), arb_spi(), any::<u16>(), bytes(32)).prop_map(|(p, spi, k, data)| {
            Payload::Notify(NotifyPayload {
                protocol: ProtocolId(p),
                spi,
                kind: NotifyType(k),
                data,
            })
        }),
        (any::<u8>(), vec(any::<u32>(), 0..6)).prop_map(|(p, spis)| Payload::Delete(
            DeletePayload {
                protocol: ProtocolId(p),
                spis
            }
        )),
        bytes(32).prop_map(Payload::VendorId),
        vec(arb_selector(), 1..4).prop_map(|selectors| Payload::TsI(TsPayload { selectors })),
        vec(arb_selector(), 1..4).prop_map(|selectors| Payload::TsR(TsPayload { selectors })),
        (
            any::<u8>(),
            vec(
                ((0u16..0x8000), bytes(20)).prop_map(|(kind, value)| CfgAttribute { kind, value }),
                0..5
            )
        )
            .prop_map(|(t, attributes)| Payload::Cp(CpPayload {
                cfg_type: CfgType(t),
                attributes
            })),
        bytes(32).prop_map(Payload::Eap),
        bytes(64).prop_map(Payload::Ps),
        (arb_unknown_kind(), bytes(32)).prop_map(|(kind, body)| Payload::Unknown {
            kind,
            critical: false,
            body
        }),
    ]
}

fn arb_encrypted() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (any::<u8>(), bytes(80)).prop_map(|(f, body)| Payload::Sk(SkPayload {
            first_payload: PayloadType(f),
            body
        })),
        (any::<u8>(), 1u16..=u16::MAX, bytes(80))
            .prop_flat_map(|(f, total, body)| (Just(f), 1..=total, Just(total), Just(body)))
            .prop_map(|(f, number, total, body)| Payload::Skf(SkfPayload {
                first_payload: PayloadType(f),
                fragment_number: number,
                total_fragments: total,
                body
            })),
    ]
}

fn arb_header() -> impl Strategy<Value = Header> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u8>(),
        any::<(bool, bool, bool)>(),
        any::<u32>(),
    )
        .prop_map(|(spi_i, spi_r, x, (i, v, r), message_id)| Header {
            spi_i,
            spi_r,
            exchange: ExchangeType(x),
            flags: Flags {
                initiator: i,
                version: v,
                response: r,
            },
            message_id,
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        arb_header(),
        vec(arb_inner_payload(), 0..10),
        option::of(arb_encrypted()),
    )
        .prop_map(|(header, mut payloads, enc)| {
            payloads.extend(enc);
            Message { header, payloads }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_message_emit_parse_round_trip(msg in arb_message()) {
        let bytes = msg.to_bytes().unwrap();
        let parsed = Message::parse(&bytes).unwrap();
        prop_assert_eq!(&parsed, &msg);
        // parse -> emit gives the same bytes.
        prop_assert_eq!(parsed.to_bytes().unwrap(), bytes.clone());
        // The raw walk agrees with the typed parse.
        let info = Header::parse(&bytes).unwrap();
        let raws: Vec<_> = PayloadIter::new(&bytes, HEADER_LEN, info.next_payload)
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(raws.len(), msg.payloads.len());
        if let Some(last) = raws.last() {
            prop_assert_eq!(last.range.end, bytes.len());
        }
        // The encrypted payload, if any, is found where it is.
        let layout = locate_encrypted(&bytes).unwrap();
        match msg.payloads.last() {
            Some(Payload::Sk(sk)) => {
                let l = layout.unwrap();
                prop_assert_eq!(l.header.len(), 4);
                prop_assert_eq!(&bytes[l.body.clone()], sk.body.as_slice());
            }
            Some(Payload::Skf(skf)) => {
                let l = layout.unwrap();
                prop_assert_eq!(l.header.len(), 8);
                prop_assert_eq!(&bytes[l.body.clone()], skf.body.as_slice());
            }
            _ => prop_assert!(layout.is_none()),
        }
    }

    #[test]
    fn prop_chain_emit_parse_round_trip(chain in vec(arb_inner_payload(), 0..12)) {
        let mut bytes = Vec::new();
        let first = emit_chain(&chain, &mut bytes).unwrap();
        prop_assert_eq!(first, chain.first().map_or(PayloadType::NONE, Payload::kind));
        let parsed = parse_chain(first, &bytes).unwrap();
        prop_assert_eq!(&parsed, &chain);
        let mut again = Vec::new();
        emit_chain(&parsed, &mut again).unwrap();
        prop_assert_eq!(again, bytes);
    }

    #[test]
    fn prop_random_bytes_never_panic(data in bytes(1024), first in any::<u8>()) {
        let _ = Message::parse(&data);
        let _ = Header::parse(&data);
        let _ = locate_encrypted(&data);
        let _ = parse_chain(PayloadType(first), &data);
        for raw in PayloadIter::new(&data, 0, PayloadType(first)) {
            let _ = raw.map(|r| Payload::parse(&r));
        }
        let _ = SaPayload::parse(&data);
        let _ = TsPayload::parse(&data);
        let _ = CpPayload::parse(&data);
        let _ = DeletePayload::parse(&data);
        let _ = NotifyPayload::parse(&data);
        let _ = Identity::parse(&data);
        let _ = SkfPayload::parse(PayloadType(first), &data);
    }

    /// Random payload bytes behind a valid header, so the walk gets past the header checks.
    #[test]
    fn prop_random_chain_behind_valid_header_never_panics(
        chain in bytes(600),
        first in prop::sample::select(vec![33u8, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
                                            45, 46, 47, 48, 53, 54, 0, 1, 200]),
    ) {
        let bytes = raw_message(first, &chain);
        let _ = Message::parse(&bytes);
        let _ = locate_encrypted(&bytes);
    }

    /// Valid messages with a few bytes overwritten: errors or messages, never panics, and
    /// whatever parses re-emits and parses to the same value.
    #[test]
    fn prop_mutated_messages_never_panic(
        msg in arb_message(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = msg.to_bytes().unwrap();
        for (i, v) in edits {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        if let Ok(m) = Message::parse(&bytes) {
            let again = m.to_bytes().unwrap();
            prop_assert_eq!(Message::parse(&again).unwrap(), m);
        }
        let _ = locate_encrypted(&bytes);
    }

    #[test]
    fn prop_truncated_messages_are_errors(msg in arb_message(), cut in any::<prop::sample::Index>()) {
        let bytes = msg.to_bytes().unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(Message::parse(&bytes[..cut]).is_err());
        if cut >= HEADER_LEN {
            let mut short = bytes[..cut].to_vec();
            set_length(&mut short);
            prop_assert!(Message::parse(&short).is_err());
        }
    }
}

/// RFC 8019 §7.1.2, §8: an IKE_SA_INIT retry with N(COOKIE), PS, ... and the PUZZLE notify.
#[test]
fn puzzle_solution_payload_and_puzzle_notify() {
    let ps = vec![
        0x06, 0x18, 0x40, 0x07, 0x33, 0x24, 0x0c, 0x8a, 0x2a, 0x0d, 0x94, 0xc8,
    ];
    let msg = Message {
        header: sample_header(),
        payloads: vec![
            Payload::Notify(NotifyPayload::new(NotifyType::COOKIE, vec![7; 20])),
            Payload::Ps(ps.clone()),
            Payload::Nonce(vec![1; 32]),
        ],
    };
    let bytes = msg.to_bytes().unwrap();
    // The PS payload: type 54 in the Notify's Next Payload, its body as given.
    let raws: Vec<_> = PayloadIter::new(&bytes, HEADER_LEN, PayloadType::NOTIFY)
        .map(Result::unwrap)
        .collect();
    assert_eq!(raws[0].next, PayloadType(54));
    assert_eq!(raws[1].kind, PayloadType::PS);
    assert_eq!(raws[1].body, &ps[..]);
    assert_eq!(Message::parse(&bytes).unwrap(), msg);
    assert!(PayloadType::PS.is_known());

    // PUZZLE data: PRF transform ID and difficulty, nothing else (RFC 8019 §8.1).
    let p = PuzzleData {
        prf: 5,
        difficulty: 18,
    };
    assert_eq!(p.to_bytes(), [0, 5, 18]);
    assert_eq!(PuzzleData::parse(&[0, 5, 18]), Ok(p));
    assert!(PuzzleData::parse(&[0, 5]).is_err());
    assert!(PuzzleData::parse(&[0, 5, 18, 0]).is_err());
    assert!(PuzzleData::parse(&[]).is_err());
}
