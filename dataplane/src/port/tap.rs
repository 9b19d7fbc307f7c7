//! Linux TAP device: the ciphertext side, Ethernet II frames ([`Medium::Ethernet`]). Everything
//! but the device kind and the medium is [`TunTapFd`], shared with [`Tun`](super::tun::Tun).

use std::io;

use super::Medium;
use super::tun::{Kind, TunConfig, TunTapFd};

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
}

super::tun::tun_tap_port!(Tap, Medium::Ethernet);

#[cfg(test)]
mod tests {
    use super::super::tun::testutil::in_fresh_netns;
    use super::*;
    use crate::port::{PacketPool, Port};
    use std::collections::VecDeque;

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
