//! Linux TAP device: the ciphertext side, Ethernet II frames ([`Medium::Ethernet`]). Everything
//! but the device kind and the medium is [`TunTapFd`], shared with [`Tun`](super::tun::Tun).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use super::tun::{Kind, TunConfig, TunTapFd, TunTapStats};
use super::{Medium, Packet, PacketPool, Port};

/// A TAP queue: Ethernet frames without FCS (`IFF_TAP | IFF_NO_PI`).
#[derive(Debug)]
pub struct Tap {
    dev: TunTapFd,
}

impl Tap {
    /// Opens (creating if needed) the single-queue TAP interface `name`; `mtu` is what
    /// [`Port::mtu`] reports: the largest frame, e.g. 1514 for an interface MTU of 1500.
    pub fn open(name: &str, mtu: usize) -> io::Result<Tap> {
        Tap::open_with(&TunConfig::new(name, mtu))
    }

    /// Opens a TAP queue as `cfg` says (e.g. one of several `multi_queue` queues).
    pub fn open_with(cfg: &TunConfig) -> io::Result<Tap> {
        Ok(Tap {
            dev: TunTapFd::open(cfg, Kind::Tap)?,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        self.dev.name()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TunTapStats {
        self.dev.stats()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

impl Port for Tap {
    fn recv_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> io::Result<usize> {
        self.dev.recv_burst(pool, out, max)
    }

    fn send_burst(
        &mut self,
        pool: &mut PacketPool,
        pkts: &mut VecDeque<Packet>,
    ) -> io::Result<usize> {
        self.dev.send_burst(pool, pkts)
    }

    fn medium(&self) -> Medium {
        Medium::Ethernet
    }

    fn mtu(&self) -> usize {
        self.dev.mtu()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tun::testutil::in_fresh_netns;
    use super::*;

    #[test]
    fn opens_a_tap_that_reads_nothing_while_down() {
        in_fresh_netns(|| {
            let mut tap = match Tap::open("iktap-unit0", 1514) {
                Ok(t) => t,
                Err(e) => {
                    println!("SKIP: cannot open a TAP device: {e}");
                    return;
                }
            };
            assert_eq!(tap.name(), "iktap-unit0");
            assert_eq!(tap.medium(), Medium::Ethernet);
            assert_eq!(tap.mtu(), 1514);
            let mut pool = PacketPool::default();
            let mut out = Vec::new();
            assert_eq!(tap.recv_burst(&mut pool, &mut out, 8).unwrap(), 0);
            // A runt frame on a down link: refused or taken, never a panic, never left queued.
            let mut runt = pool.get();
            assert!(runt.fill_from(&[0; 4]));
            let mut q = VecDeque::from([runt]);
            tap.send_burst(&mut pool, &mut q).unwrap();
            assert!(q.is_empty());
            let s = tap.stats();
            assert_eq!(s.tx_packets + s.tx_dropped, 1, "{s:?}");
        });
    }
}
