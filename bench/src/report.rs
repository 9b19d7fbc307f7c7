//! Output helpers: the machine description every report carries.

use serde::Serialize;

/// Where a run happened, so numbers are never quoted without their machine.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    /// The CPU features that change crypto speed (AES-NI, carry-less multiply, AVX2, AVX-512,
    /// vector AES), as /proc/cpuinfo lists them.
    pub flags: Vec<String>,
    pub cores: usize,
    pub profile: &'static str,
}

/// Flags worth printing beside a number.
const FLAGS: [&str; 6] = ["aes", "pclmulqdq", "avx2", "avx512f", "vaes", "vpclmulqdq"];

impl Machine {
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let flags = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("flags"))?;
                let have: Vec<&str> = line.split(':').nth(1)?.split_whitespace().collect();
                Some(
                    FLAGS
                        .iter()
                        .filter(|f| have.contains(f))
                        .map(|f| (*f).to_owned())
                        .collect(),
                )
            })
            .unwrap_or_default();
        Machine {
            cpu,
            flags,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} cores, {}; {} build)",
            self.cpu,
            self.cores,
            self.flags.join(" "),
            self.profile
        )
    }
}

/// Pins the thread to the first core (best effort: an unpinned run still gives numbers, just
/// noisier ones). Read the [`Machine`] first: once pinned, the thread sees one core.
pub fn pin_first_core() {
    if let Some(core) = core_affinity::get_core_ids()
        .unwrap_or_default()
        .first()
        .copied()
    {
        let _ = core_affinity::set_for_current(core);
    }
}

/// Prints `report` as one JSON object, or as the table `table` draws.
pub fn print<R: Serialize>(json: bool, report: &R, table: impl FnOnce(&R)) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| e.to_string())?
        );
    } else {
        table(report);
    }
    Ok(())
}
