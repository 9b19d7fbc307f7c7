//! ESP decapsulation on hostile input, two ways:
//! - raw: the input is the packet (exercises length, SPI, replay and ICV checks);
//! - sealed: the input is the plaintext (payload, padding, trailer) of an authentic packet built
//!   with the SA's own key, so the code after the ICV (trailer, padding, Next Header, inner IP
//!   packet, transport-mode header rebuild) sees arbitrary bytes too.
//! Nothing may panic, and a failed packet must leave the replay window where it was.
#![no_main]

use std::net::Ipv4Addr;

use iketcp_dataplane::crypto::{Backend, Keymat, Suite};
use iketcp_dataplane::sa::{InboundSa, Mode, SaParams, TRANSPORT_DECAP_HEADROOM};
use libfuzzer_sys::fuzz_target;

const SPI: u32 = 0x0000_4321;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let suite = Suite::ALL[usize::from(ctl & 3) % 3];
    let backend = if ctl & 4 == 0 {
        Backend::RustCrypto
    } else {
        Backend::AwsLc
    };
    let esn = ctl & 8 != 0;
    let mode = if ctl & 16 == 0 {
        Mode::Tunnel
    } else {
        Mode::Transport {
            src: Ipv4Addr::new(192, 0, 2, 1).into(),
            dst: Ipv4Addr::new(192, 0, 2, 2).into(),
            fix_checksums: ctl & 64 != 0,
        }
    };
    let keymat: Vec<u8> = (0..suite.keymat_len() as u8).collect();
    let Ok(keymat) = Keymat::new(suite, &keymat) else {
        return;
    };
    let mut p = SaParams::new(SPI, keymat.clone(), backend);
    p.esn = esn;
    p.mode = mode;
    let Ok(mut sa) = InboundSa::new(&p) else {
        return;
    };

    let head = TRANSPORT_DECAP_HEADROOM;
    let mut buf = vec![0u8; head];
    if ctl & 32 == 0 {
        buf.extend_from_slice(rest);
    } else {
        // An authentic packet with sequence number 1 around the fuzzer's plaintext.
        let Ok(key) = keymat.build(backend) else {
            return;
        };
        let iv = 1u64.to_be_bytes();
        let mut aad = Vec::from(SPI.to_be_bytes());
        if esn {
            aad.extend_from_slice(&1u64.to_be_bytes());
        } else {
            aad.extend_from_slice(&1u32.to_be_bytes());
        }
        let mut ct = rest.to_vec();
        let Ok(icv) = key.aead().seal(&key.nonce(&iv), &aad, &mut ct) else {
            return;
        };
        buf.extend_from_slice(&SPI.to_be_bytes());
        buf.extend_from_slice(&1u32.to_be_bytes());
        buf.extend_from_slice(&iv);
        buf.extend_from_slice(&ct);
        buf.extend_from_slice(&icv);
    }
    let end = buf.len();
    let top = sa.window().top();
    match sa.decap(&mut buf, head..end) {
        Ok(_) => {}
        Err(iketcp_dataplane::sa::DecapError::Trailer(_))
        | Err(iketcp_dataplane::sa::DecapError::UnexpectedNextHeader(_))
        | Err(iketcp_dataplane::sa::DecapError::BadInnerPacket)
        | Err(iketcp_dataplane::sa::DecapError::NoHeadroom) => {
            // Authentic but unusable: the window may have advanced (the packet was genuine).
        }
        Err(_) => assert_eq!(sa.window().top(), top, "a rejected packet moved the window"),
    }
    // Garbage ranges never panic.
    let _ = sa.decap(&mut buf, end..end + 10);
    let _ = sa.decap(&mut buf, 3..2);
});
