//! Arbitrary bytes as an IKEv2 message and as a decrypted payload chain. Nothing may panic, and
//! whatever parses must re-emit to bytes that parse to the same value.
#![no_main]

use iketcp_control::ike::wire::{Message, PayloadType, emit_chain, parse_chain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let mut out = Vec::new();
        if m.emit(&mut out).is_ok() {
            let again = Message::parse(&out);
            assert!(
                matches!(again, Ok(ref m2) if *m2 == m),
                "re-emitted message does not parse back equal"
            );
        }
    }
    if let Some((&first, rest)) = data.split_first()
        && let Ok(chain) = parse_chain(PayloadType(first), rest)
    {
        let mut out = Vec::new();
        if let Ok(kind) = emit_chain(&chain, &mut out) {
            assert_eq!(parse_chain(kind, &out).ok().as_ref(), Some(&chain));
        }
    }
});
