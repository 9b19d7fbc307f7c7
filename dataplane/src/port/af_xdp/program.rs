//! The XDP program that hands the userspace stack's frames to its AF_XDP sockets
//! (`bpf/xsk_steer.c`), loaded and attached with aya. It steals ARP for, and IP to, the
//! configured addresses and passes everything else to the kernel.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use aya::Ebpf;
use aya::maps::{Array, XskMap};
use aya::programs::{Xdp, XdpMode};

/// The compiled program, built from `bpf/xsk_steer.c` by `bpf/build.sh`.
pub(super) const OBJECT: &[u8] = include_bytes!("bpf/xsk_steer.o");

/// Slots of the program's socket map: the highest queue index a socket can be bound to, plus one.
pub const MAX_QUEUES: u32 = 64;

/// How the program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver when it can, else generic (skb) XDP.
    #[default]
    Auto,
    /// In the driver (native XDP) or not at all.
    Native,
    /// Generic XDP, in the kernel's receive path after the skb is built (works on any device).
    Generic,
}

/// Why the program could not be set up.
#[derive(Debug)]
pub enum ProgramError {
    /// The object could not be parsed or the program or a map is missing from it.
    Object(String),
    /// The kernel refused to load the program (the verifier) or a map.
    Load(String),
    /// The program could not be attached to the interface.
    Attach(String),
    /// A map update failed.
    Map(String),
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgramError::Object(e) => write!(f, "XDP object: {e}"),
            ProgramError::Load(e) => write!(f, "loading the XDP program: {e}"),
            ProgramError::Attach(e) => write!(f, "attaching the XDP program: {e}"),
            ProgramError::Map(e) => write!(f, "XDP map: {e}"),
        }
    }
}

impl std::error::Error for ProgramError {}

impl From<ProgramError> for std::io::Error {
    fn from(e: ProgramError) -> Self {
        std::io::Error::other(e)
    }
}

/// What the program steals: the addresses of the userspace stack on this interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steal {
    /// ARP for it and IPv4 to it.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 to it and to its solicited-node group.
    pub ipv6: Option<Ipv6Addr>,
}

impl Steal {
    /// The `struct steer_cfg` of the program: flags (host order), then the addresses as they
    /// appear on the wire.
    fn to_cfg(self) -> [u8; 24] {
        let mut cfg = [0u8; 24];
        let mut flags = 0u32;
        if let Some(a) = self.ipv4 {
            flags |= 1;
            cfg[4..8].copy_from_slice(&a.octets());
        }
        if let Some(a) = self.ipv6 {
            flags |= 2;
            cfg[8..24].copy_from_slice(&a.octets());
        }
        cfg[0..4].copy_from_slice(&flags.to_ne_bytes());
        cfg
    }
}

/// The program attached to one interface. Dropping it detaches the program (aya owns the link).
pub struct SteerProgram {
    ebpf: Ebpf,
    ifindex: u32,
    mode: AttachMode,
}

impl fmt::Debug for SteerProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteerProgram")
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .finish()
    }
}

impl SteerProgram {
    /// Loads the program, tells it what to steal, and attaches it to `ifindex` as `mode` says.
    pub fn attach(ifindex: u32, steal: Steal, mode: AttachMode) -> Result<Self, ProgramError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| ProgramError::Object(e.to_string()))?;
        {
            let map = ebpf
                .map_mut("steer")
                .ok_or_else(|| ProgramError::Object("no map `steer`".into()))?;
            let mut cfg: Array<_, [u8; 24]> =
                Array::try_from(map).map_err(|e| ProgramError::Object(e.to_string()))?;
            cfg.set(0, steal.to_cfg(), 0)
                .map_err(|e| ProgramError::Map(e.to_string()))?;
        }
        let prog: &mut Xdp = ebpf
            .program_mut("xsk_steer")
            .ok_or_else(|| ProgramError::Object("no program `xsk_steer`".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| ProgramError::Object(e.to_string()))?;
        prog.load().map_err(|e| ProgramError::Load(e.to_string()))?;
        let used = match mode {
            AttachMode::Native => {
                prog.attach_to_if_index(ifindex, XdpMode::Driver)
                    .map_err(|e| ProgramError::Attach(format!("native: {e}")))?;
                AttachMode::Native
            }
            AttachMode::Generic => {
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(|e| ProgramError::Attach(format!("generic: {e}")))?;
                AttachMode::Generic
            }
            AttachMode::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(_) => AttachMode::Native,
                Err(native) => {
                    prog.attach_to_if_index(ifindex, XdpMode::Skb)
                        .map_err(|e| {
                            ProgramError::Attach(format!("native: {native}; generic: {e}"))
                        })?;
                    AttachMode::Generic
                }
            },
        };
        Ok(SteerProgram {
            ebpf,
            ifindex,
            mode: used,
        })
    }

    /// How the program ended up attached (never `Auto`).
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The interface it is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends what the program steals on `queue` to `socket` (an AF_XDP socket bound to that
    /// queue of this interface).
    pub fn register(&mut self, queue: u32, socket: &impl AsRawFd) -> Result<(), ProgramError> {
        let map = self
            .ebpf
            .map_mut("xsks")
            .ok_or_else(|| ProgramError::Object("no map `xsks`".into()))?;
        let mut xsks = XskMap::try_from(map).map_err(|e| ProgramError::Object(e.to_string()))?;
        xsks.set(queue, socket.as_raw_fd(), 0)
            .map_err(|e| ProgramError::Map(format!("queue {queue}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steal_config_has_the_c_layout() {
        let cfg = Steal {
            ipv4: Some(Ipv4Addr::new(192, 0, 2, 2)),
            ipv6: Some("fd00::2".parse().unwrap()),
        }
        .to_cfg();
        assert_eq!(u32::from_ne_bytes(cfg[0..4].try_into().unwrap()), 3);
        assert_eq!(&cfg[4..8], &[192, 0, 2, 2]);
        assert_eq!(cfg[8], 0xfd);
        assert_eq!(cfg[23], 2);
        let none = Steal::default().to_cfg();
        assert_eq!(none, [0; 24]);
    }

    /// The committed object is what `bpf/build.sh` makes of the committed source, so the program
    /// that runs is the one that is reviewed. Needs clang (CI installs it).
    #[test]
    fn the_committed_xdp_object_is_built_from_its_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/port/af_xdp/bpf");
        let clang = std::process::Command::new("clang")
            .arg("--version")
            .output();
        if clang.map(|o| !o.status.success()).unwrap_or(true) {
            println!("SKIP: clang is not installed, the XDP object cannot be rebuilt");
            return;
        }
        let out = std::env::temp_dir().join(format!("xsk_steer-{}.o", std::process::id()));
        let st = std::process::Command::new("sh")
            .arg(dir.join("build.sh"))
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "bpf/build.sh failed");
        let built = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert!(
            built == OBJECT,
            "bpf/xsk_steer.o is stale: run dataplane/src/port/af_xdp/bpf/build.sh and commit it"
        );
    }
}
