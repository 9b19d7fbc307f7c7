//! Which worker holds each inbound SPI, shared by all workers of a data plane.
//!
//! A connection can land on another worker than the one holding its IKE SA's SAs (a NAT gave the
//! reconnecting Originator a new port, and the steering hash sends the new 4-tuple elsewhere).
//! ESP for an SPI that lives on another worker is then not corruption (RFC 9329 §6.1, R-6.1-p):
//! the worker drops it without counting it toward the unknown-SPI close, and reports it so
//! control moves the SAs over. Only the control path writes (SA install and delete) and only
//! unknown SPIs read, so a lock is off the packet path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Inbound SPI → owning worker. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct SpiDirectory(Arc<RwLock<HashMap<u32, u16>>>);

impl SpiDirectory {
    /// Records that `worker` holds inbound SPI `spi`.
    pub fn insert(&self, spi: u32, worker: u16) {
        // A poisoned lock (a worker panicked mid-write) leaves the directory as it was: only
        // the migration hint is lost, never packet handling.
        if let Ok(mut m) = self.0.write() {
            m.insert(spi, worker);
        }
    }

    /// Forgets `spi` if `worker` is its owner (a newer install elsewhere stays).
    pub fn remove(&self, spi: u32, worker: u16) {
        if let Ok(mut m) = self.0.write()
            && m.get(&spi) == Some(&worker)
        {
            m.remove(&spi);
        }
    }

    /// The worker holding `spi`.
    pub fn owner(&self, spi: u32) -> Option<u16> {
        self.0.read().ok().and_then(|m| m.get(&spi).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_follows_installs_and_removes() {
        let d = SpiDirectory::default();
        let e = d.clone();
        d.insert(0x1001, 0);
        assert_eq!(e.owner(0x1001), Some(0));
        // Moved: the new owner installs before the old one's removal is applied.
        e.insert(0x1001, 1);
        d.remove(0x1001, 0);
        assert_eq!(d.owner(0x1001), Some(1));
        d.remove(0x1001, 1);
        assert_eq!(d.owner(0x1001), None);
    }
}
