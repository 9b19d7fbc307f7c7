//! Per-worker counters: one writer (the worker), read by a stats thread without stopping it.
//! Each counter sits on its own cache line so the reader never bounces the writer's lines.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;

macro_rules! counters {
    (@first $d:literal $($rest:literal)*) => { $d };
    (@first) => { "" };
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Live counters of one worker.
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            $( $(#[doc = $doc])* pub $name: CachePadded<AtomicU64>, )*
        }

        /// A copy of [`WorkerStats`] at one moment (each field read atomically, the set not).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl WorkerStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl StatsSnapshot {
            /// Field-wise sum (to aggregate workers).
            pub fn add(&mut self, o: &StatsSnapshot) {
                $( self.$name += o.$name; )*
            }

            /// Every counter with its name and its first doc line (for metrics exposition).
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![ $( (stringify!($name), counters!(@first $($doc)*), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Inner packets read from the plaintext port.
    plain_in,
    /// Inner packets written to the plaintext port.
    plain_out,
    /// Inner bytes encapsulated.
    bytes_encap,
    /// Inner bytes decapsulated and delivered.
    bytes_decap,
    /// ESP packets sent.
    esp_out,
    /// ESP packets received and authentic.
    esp_in,
    /// IKE frames received (passed to control).
    ike_in,
    /// IKE frames sent.
    ike_out,
    /// NAT-keepalives received (RFC 9329 §6.6, dropped silently).
    keepalives_in,
    /// Frames neither IKE nor ESP.
    frames_unparseable,
    /// ESP frames with an SPI we do not have.
    unknown_spi,
    /// Replayed or too-old ESP packets (RFC 4303 §3.4.3).
    replays,
    /// ESP packets whose ICV failed.
    icv_failures,
    /// Authentic ESP packets dropped after the ICV (padding, Next Header, inner packet).
    bad_payload,
    /// Dummy packets (Next Header 59).
    dummies,
    /// Inner packets with no outbound SA (SPD miss).
    no_sa,
    /// Inner packets whose SA has no live connection.
    no_connection,
    /// Inner packets that could not be encapsulated (sequence exhausted, malformed).
    encap_errors,
    /// Packets dropped because their connection's queue was full: IKE messages past the IKE
    /// allowance, inner packets once the connection's peer stalled (`EngineConfig::stall_after`, 100 ms without a byte taken).
    queue_full,
    /// Times the worker stopped reading plaintext because a connection's send queue reached its
    /// frame or byte bound (`[limits] queued_bytes_per_connection`): backpressure, no drop.
    queue_held,
    /// Inner packets passed to the worker holding their outbound SA (see `worker::forward`).
    fwd_out,
    /// Inner packets taken from this worker's inbox (forwarded by another worker).
    fwd_in,
    /// Inner packets for another worker's SA dropped because its inbox was full.
    fwd_dropped,
    /// Connections closed for corruption (RFC 9329 §6.1).
    closed_corrupt,
    /// Connections closed for a fatal stream error (bad prefix, Length 0/1).
    closed_stream_error,
    /// Connections that came up.
    conns_up,
    /// Connections that went down.
    conns_down,
    /// Control commands applied.
    commands,
    /// Worker loop iterations.
    loops,
    /// Hints for control (stats, unknown or foreign SPIs) dropped because the event channel was
    /// full.
    events_dropped,
    /// Reliable events that found the event channel full and waited in the worker's outbox.
    events_deferred,
    /// Times a connection was not read because its IKE messages (or the worker's) waiting for
    /// control reached the IKE byte budget.
    ike_paused,
    /// `VerifyEsp` packets that passed (`verify_ok`) or failed (`verify_failed`).
    verify_ok,
    /// See `verify_ok`.
    verify_failed,
    /// Nanoseconds spent in iterations that did work (the rest is polling an idle link):
    /// `busy_ns` over wall time is the worker's load.
    busy_ns,
    /// Connections (or SYNs) the transport refused by a limit (connection slots, untrusted
    /// connections in all or per source, half-open accepts), as of the last stats report.
    tcp_refused,
    /// Untrusted accepted connections open at the last stats report (a gauge).
    tcp_untrusted,
    /// TUN offload: TCP super-packets read and cut into segments, as of the last stats report.
    tun_super_in,
    /// TUN offload: writes that joined two or more decrypted segments, likewise.
    tun_joined_out,
    /// TUN offload: packets read that could not be cut (dropped), likewise.
    tun_offload_errors,
    /// Frames the userspace stack's link (an AF_XDP port) received, as of the last stats report.
    link_rx,
    /// Frames it sent, likewise.
    link_tx,
    /// Frames it or the kernel's AF_XDP rings dropped (ring full, fill ring empty, too large),
    /// likewise.
    link_dropped,
}

impl WorkerStats {
    /// A number that changes whenever the worker did something (packets, frames, connection
    /// events, commands); the loop compares it to tell busy iterations from idle polling without
    /// copying every counter.
    #[inline]
    pub fn activity(&self) -> u64 {
        [
            &self.plain_in,
            &self.fwd_in,
            &self.esp_in,
            &self.esp_out,
            &self.ike_in,
            &self.frames_unparseable,
            &self.unknown_spi,
            &self.conns_up,
            &self.conns_down,
            &self.commands,
        ]
        .iter()
        .fold(0u64, |a, c| a.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

/// Increments a counter; the worker is its only writer, so a load and a store suffice (no locked
/// read-modify-write on the packet path).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_every_counter_with_its_doc() {
        let s = StatsSnapshot {
            plain_in: 7,
            ..StatsSnapshot::default()
        };
        let f = s.fields();
        let plain_in = f.iter().find(|x| x.0 == "plain_in").map(|x| (x.1, x.2));
        assert_eq!(
            plain_in,
            Some((" Inner packets read from the plaintext port.", 7))
        );
        assert!(
            f.iter().all(|x| !x.1.is_empty()),
            "every counter documented"
        );
    }
}
