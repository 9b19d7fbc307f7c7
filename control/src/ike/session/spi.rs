//! Inbound ESP SPIs: unique among all the SAs of one data plane (RFC 4303 §2.1: the SPI, with
//! the destination, identifies the SA of an inbound packet), so every session of that data plane
//! draws from one [`SpiPool`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{SessionError, random};

/// SPIs 1..=255 are reserved by IANA and 0 is never sent (RFC 4303 §2.1).
const FIRST_SPI: u32 = 256;

/// Random draws before [`SpiPool::allocate`] gives up. With the 2^32 space nearly free a
/// collision is rare; 64 failures in a row mean the pool is (close to) full.
const MAX_DRAWS: usize = 64;

/// The inbound SPIs in use on one data plane. Cheap to clone: clones share the set, so the
/// driver gives one pool to every session of its data plane (through [`super::Config`]).
///
/// Ownership: a session releases what it allocated for an exchange that produced no Child SA
/// (refused, failed, timed out, superseded) and, when dropped, whatever it allocated and never
/// handed out. An SPI handed out as [`super::ChildSa::spi_in`] belongs to the caller, who calls
/// [`SpiPool::release`] once that inbound SA is gone.
#[derive(Clone)]
pub struct SpiPool {
    used: Arc<Mutex<HashSet<u32>>>,
    /// Inclusive range drawn from: `FIRST_SPI..=u32::MAX`, narrower only in tests.
    low: u32,
    high: u32,
}

impl fmt::Debug for SpiPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiPool")
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Default for SpiPool {
    fn default() -> Self {
        SpiPool::new()
    }
}

impl SpiPool {
    /// An empty pool.
    pub fn new() -> SpiPool {
        SpiPool {
            used: Arc::new(Mutex::new(HashSet::new())),
            low: FIRST_SPI,
            high: u32::MAX,
        }
    }

    /// A pool drawing only from `low..=high` (so tests can fill it).
    #[cfg(test)]
    pub(super) fn with_range(low: u32, high: u32) -> SpiPool {
        SpiPool {
            low: low.max(FIRST_SPI),
            high,
            ..SpiPool::new()
        }
    }

    /// The set; a panic elsewhere while it was locked cannot leave it inconsistent (every
    /// change is one insert or remove), so a poisoned lock is used as is.
    fn set(&self) -> MutexGuard<'_, HashSet<u32>> {
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A random SPI above 255 that no SA of this pool uses, marked as used.
    ///
    /// # Errors
    /// [`SessionError::Rng`]; [`SessionError::SpiExhausted`] when random draws kept hitting
    /// SPIs in use.
    pub fn allocate(&self) -> Result<u32, SessionError> {
        let span = u64::from(self.high - self.low) + 1;
        let mut used = self.set();
        for _ in 0..MAX_DRAWS {
            // Uniform enough: the bias of a 64-bit draw modulo at most 2^32 is below 2^-32.
            let r = u64::from_be_bytes(random()?) % span;
            let spi = self.low + u32::try_from(r).map_err(|_| SessionError::Internal("SPI"))?;
            if used.insert(spi) {
                return Ok(spi);
            }
        }
        Err(SessionError::SpiExhausted)
    }

    /// Marks an SPI chosen elsewhere as used; `false` if it is reserved (0..=255) or in use.
    pub fn reserve(&self, spi: u32) -> bool {
        spi >= FIRST_SPI && self.set().insert(spi)
    }

    /// Makes an SPI available again (its inbound SA is gone).
    pub fn release(&self, spi: u32) {
        self.set().remove(&spi);
    }

    /// Whether `spi` is in use.
    pub fn contains(&self, spi: u32) -> bool {
        self.set().contains(&spi)
    }

    /// How many SPIs are in use.
    pub fn in_use(&self) -> usize {
        self.set().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearly half of a small range is taken: every allocation is new, in range, above 255;
    /// when the range is full the pool says so instead of handing out a duplicate.
    #[test]
    fn allocations_are_unique_in_a_crowded_pool() {
        let pool = SpiPool::with_range(256, 511);
        let taken: Vec<u32> = (256..512).step_by(2).collect();
        for &s in &taken {
            assert!(pool.reserve(s));
        }
        let mut got = HashSet::new();
        for _ in 0..64 {
            let s = pool.allocate().unwrap();
            assert!((256..512).contains(&s));
            assert!(!taken.contains(&s), "{s} was in use");
            assert!(got.insert(s), "{s} handed out twice");
        }
        assert_eq!(pool.in_use(), 128 + 64);
        for s in 256..512 {
            pool.reserve(s);
        }
        assert_eq!(pool.allocate(), Err(SessionError::SpiExhausted));
        pool.release(300);
        assert!(!pool.contains(300));
        assert!(pool.reserve(300), "released SPIs are free again");
        assert!(!pool.reserve(300));
        assert!(!pool.reserve(255), "reserved range (RFC 4303 §2.1)");
    }

    /// The full range with many SPIs in use: all above 255, none reused. (Collisions are rare
    /// at this density; the crowded pool above is the test that catches a duplicate.)
    #[test]
    fn allocations_avoid_many_spis_in_use() {
        let pool = SpiPool::new();
        let taken: Vec<u32> = (0..100_000u32)
            .map(|k| 256 + k.wrapping_mul(42_937))
            .collect();
        for &s in &taken {
            pool.reserve(s);
        }
        let before = pool.in_use();
        let mut got = HashSet::new();
        for _ in 0..10_000 {
            let s = pool.allocate().unwrap();
            assert!(s > 255);
            assert!(got.insert(s));
        }
        assert_eq!(pool.in_use(), before + 10_000, "none was already in use");
    }

    /// Clones share the set; a panic while the lock was held does not make it panic.
    #[test]
    fn clones_share_and_poisoning_does_not_panic() {
        let pool = SpiPool::new();
        let other = pool.clone();
        let s = other.allocate().unwrap();
        assert!(pool.contains(s));
        let p = pool.clone();
        let _ = std::thread::spawn(move || {
            let _held = p.used.lock();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(pool.used.is_poisoned());
        let t = pool.allocate().unwrap();
        assert_ne!(s, t);
        pool.release(s);
        assert_eq!(other.in_use(), 1);
        assert!(format!("{pool:?}").contains("in_use: 1"));
    }
}
