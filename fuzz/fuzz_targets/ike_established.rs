//! Deep state: an IKE SA established by our own initiator and responder with fixed SPIs, nonces
//! and keys (seeded RNG of the `fuzzing` feature), then up to four messages whose inner payload
//! chains are the fuzzer's, sealed with the sender's real keys (optionally as SKF fragments), so
//! they pass the integrity check and reach the payload parsers and the INFORMATIONAL and
//! CREATE_CHILD_SA state machines of either side, as requests or as answers to a request the
//! receiver just made (see `iketcp_fuzz::Record`). Then both sides' timers run. Nothing may
//! panic, and the Child SA count stays bounded by what the messages could create.
#![no_main]

use iketcp_fuzz::{Record, at, deliver, established};
use libfuzzer_sys::fuzz_target;

const MAX_RECORDS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some(mut pair) = established() else {
        return;
    };
    let records = Record::parse_all(data, MAX_RECORDS);
    for (k, rec) in records.iter().enumerate() {
        let _ = deliver(&mut pair, rec, at(1 + k as u64));
    }
    // One at creation, and per record at most one from the receiver's action and one from
    // the message.
    let bound = 1 + 2 * records.len();
    assert!(pair.i.child_sas().len() <= bound);
    assert!(pair.r.child_sas().len() <= bound);
    let _ = pair.i.handle_timeout(at(40));
    let _ = pair.r.handle_timeout(at(40));
    let _ = pair.i.handle_timeout(at(80));
    let _ = pair.r.handle_timeout(at(80));
});
