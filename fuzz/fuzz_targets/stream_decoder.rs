//! Arbitrary bytes, cut into arbitrary chunks, through the RFC 9329 stream decoder of either role.
//! Checks that nothing panics, every frame range lies inside the slice it names, at most one frame
//! per call comes from the carry buffer, the carry stays bounded, and an error is sticky.
#![no_main]

use iketcp_dataplane::wire::frame::{FrameDecoder, FrameLoc, MAX_FRAME_LEN, TcpRole};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let role = if ctl & 1 == 0 {
        TcpRole::Responder
    } else {
        TcpRole::Originator
    };
    // Chunk sizes come from the control byte: 1..=128, or the whole input at once.
    let chunk = if ctl & 0x80 != 0 {
        rest.len().max(1)
    } else {
        usize::from(ctl >> 1) + 1
    };
    let mut dec = FrameDecoder::new(role);
    let mut out = Vec::new();
    let mut failed = None;
    for piece in rest.chunks(chunk) {
        out.clear();
        let r = dec.decode(piece, &mut out);
        if let Some(e) = failed {
            assert_eq!(r, Err(e), "errors are sticky");
            continue;
        }
        let carried = out.iter().filter(|f| f.loc == FrameLoc::Carry).count();
        assert!(carried <= 1);
        for f in &out {
            assert!(
                f.bytes(piece, dec.carry()).is_some(),
                "frame range out of bounds"
            );
        }
        assert!(dec.carry().len() <= MAX_FRAME_LEN);
        if let Err(e) = r {
            failed = Some(e);
        }
    }
    let _ = dec.finish();
});
