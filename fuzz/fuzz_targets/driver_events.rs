//! The sans-IO driver core under a sequence of data-plane events decoded from the input
//! (`iketcp_fuzz::driver::Op`): connections up and down on several slots of a Responder and an
//! Originator endpoint, IKE messages (raw, or our own peers' answers, optionally with one octet
//! changed), time passing, acknowledgements (good or failed), ESP liveness reports, SA expiries
//! and operator commands. Nothing may panic; the IKE SA and connection tables stay bounded by
//! what the events could create; no command names a connection that is not up.
#![no_main]

use iketcp_fuzz::driver::{Harness, Op};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some(mut h) = Harness::new() else {
        return;
    };
    let ops = Op::parse_all(data, MAX_OPS);
    for op in &ops {
        h.step(op);
        let c = h.core.counts();
        // Every session comes from a connection or a dial, at most one per op.
        assert!(c.ike_sas <= ops.len() + 1, "{c:?}");
        assert!(c.connections <= 8, "{c:?}");
        assert_eq!(h.stray, 0, "a command named a connection that is not up");
    }
});
