//! The one source of randomness of the crate: the system RNG, except that a build with the
//! `fuzzing` feature can switch the current thread to a seeded, deterministic generator (see
//! [`fuzzing`]), so that a fuzz target's handshake gives the same SPIs, nonces and keys every
//! run. Never enable that feature outside fuzzing: its generator is not cryptographic.

/// Fills `buf` with random octets.
pub(crate) fn fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    #[cfg(feature = "fuzzing")]
    if fuzzing::fill(buf) {
        return Ok(());
    }
    getrandom::fill(buf)
}

/// Whether the current thread uses the deterministic generator.
#[cfg(feature = "fuzzing")]
pub(crate) fn deterministic() -> bool {
    fuzzing::STATE.with(|s| s.get().is_some())
}

/// Fuzzing only: a seeded generator for the current thread (not cryptographic).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use std::cell::Cell;

    thread_local! {
        pub(super) static STATE: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// From now on this thread's randomness comes from a SplitMix64 stream seeded with `seed`;
    /// `None` goes back to the system RNG.
    pub fn set_deterministic_rng(seed: Option<u64>) {
        STATE.with(|s| s.set(seed));
    }

    /// Fills `buf` from the seeded stream; false if the thread has none.
    pub(super) fn fill(buf: &mut [u8]) -> bool {
        STATE.with(|s| {
            let Some(mut x) = s.get() else {
                return false;
            };
            for chunk in buf.chunks_mut(8) {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
            }
            s.set(Some(x));
            true
        })
    }
}
