//! The thin runtime around the sans-IO [`Core`]: it reads the data plane's event channel and
//! the clock, hands the core's commands to the workers' channels, and writes the key log.
//!
//! Commands are never sent with a blocking call: one that finds its worker's queue full waits
//! here, behind the others for that worker (order matters: an install before its bind), and
//! goes at the next pump. A worker that takes nothing while [`MAX_UNSENT`] commands wait is
//! reported as stuck.

use std::collections::{HashSet, VecDeque};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iketcp_dataplane::worker::handle::{Command, DataplaneHandle, Event, IkeSaId, SendError};

use crate::ike::session::PuzzleAnswer;

use super::{
    Core, DriverError, DriverEvent, Endpoint, EndpointId, KEYLOG_ESP_FILE, KEYLOG_IKE_FILE,
};

/// Commands that may wait for one worker before it counts as stuck.
pub const MAX_UNSENT: usize = 65_536;

/// The driver with its I/O: a [`Core`] pumped against a [`DataplaneHandle`]. Reading the core's
/// state goes through `Deref`; everything that changes it goes through the methods here, which
/// pump the commands it produced.
#[derive(Debug)]
pub struct Driver {
    core: Core,
    handle: DataplaneHandle,
    /// Commands per worker that found its queue full, oldest first.
    unsent: Vec<VecDeque<Command>>,
    /// Directory of the key log, when the operator asked for one.
    keylog: Option<PathBuf>,
    /// Key log lines already written, by SA (both ends of a demo report the same SA).
    keylog_seen: HashSet<String>,
}

impl Deref for Driver {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Appends `line` to `file`, creating it with mode 0600.
fn append_secret(file: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    writeln!(f, "{line}")
}

impl Driver {
    /// A driver with no endpoints yet on the data plane behind `handle`.
    pub fn new(handle: DataplaneHandle) -> Self {
        let unsent = (0..handle.workers()).map(|_| VecDeque::new()).collect();
        Driver {
            core: Core::new(Instant::now()),
            handle,
            unsent,
            keylog: None,
            keylog_seen: HashSet::new(),
        }
    }

    /// The data plane handle.
    pub fn handle(&self) -> &DataplaneHandle {
        &self.handle
    }

    /// The core, for calls not wrapped here; call [`pump`](Self::pump) after changing it.
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// Hands the core's commands to the workers and writes its key log lines.
    ///
    /// # Errors
    /// A worker is gone or stuck; the key log cannot be written.
    pub fn pump(&mut self) -> Result<(), DriverError> {
        for w in 0..self.unsent.len() {
            self.flush_unsent(w)?;
        }
        while let Some((worker, cmd)) = self.core.poll_command() {
            let w = usize::from(worker);
            let Some(queue) = self.unsent.get_mut(w) else {
                return Err(DriverError::WorkerGone { worker });
            };
            if !queue.is_empty() {
                queue.push_back(cmd);
                if queue.len() > MAX_UNSENT {
                    let queued = queue.len();
                    return Err(DriverError::WorkerStuck { worker, queued });
                }
                continue;
            }
            match self.handle.send(worker, cmd) {
                Ok(()) => {}
                Err(SendError::Full(cmd)) => queue.push_back(*cmd),
                Err(SendError::Gone) => return Err(DriverError::WorkerGone { worker }),
            }
        }
        while let Some(k) = self.core.poll_keylog() {
            let Some(dir) = &self.keylog else { continue };
            if self.keylog_seen.contains(&k.key) {
                continue;
            }
            let path = dir.join(k.file);
            append_secret(&path, &k.line).map_err(|e| DriverError::KeyLog {
                path,
                kind: e.kind(),
            })?;
            self.keylog_seen.insert(k.key.clone());
        }
        Ok(())
    }

    fn flush_unsent(&mut self, w: usize) -> Result<(), DriverError> {
        let worker = u16::try_from(w).unwrap_or(u16::MAX);
        while let Some(cmd) = self.unsent.get_mut(w).and_then(VecDeque::pop_front) {
            match self.handle.send(worker, cmd) {
                Ok(()) => {}
                Err(SendError::Full(cmd)) => {
                    if let Some(q) = self.unsent.get_mut(w) {
                        q.push_front(*cmd);
                    }
                    return Ok(());
                }
                Err(SendError::Gone) => return Err(DriverError::WorkerGone { worker }),
            }
        }
        Ok(())
    }

    /// Commands waiting for room in a worker's queue.
    pub fn unsent(&self) -> usize {
        self.unsent.iter().map(VecDeque::len).sum()
    }

    /// Writes the keys of every IKE SA and Child SA from now on to `dir`, in Wireshark's
    /// `ikev2_decryption_table` and `esp_sa` files (created with mode 0600, appended to; the
    /// directory is created with mode 0700 when missing). Keys are secrets: call this only when
    /// the operator asked for a key log.
    ///
    /// # Errors
    /// If the directory or the files cannot be created.
    pub fn set_keylog(&mut self, dir: &Path) -> Result<(), DriverError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| DriverError::KeyLog {
                path: dir.to_path_buf(),
                kind: e.kind(),
            })?;
        for name in [KEYLOG_IKE_FILE, KEYLOG_ESP_FILE] {
            let path = dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| DriverError::KeyLog {
                    path,
                    kind: e.kind(),
                })?;
        }
        self.keylog = Some(dir.to_path_buf());
        self.core.set_keylog(true);
        Ok(())
    }

    /// Adds an endpoint and starts it; returns its index.
    ///
    /// # Errors
    /// See [`Core::add`] and [`pump`](Self::pump).
    pub fn add(&mut self, ep: Endpoint) -> Result<EndpointId, DriverError> {
        let r = self.core.add(ep, Instant::now())?;
        self.pump()?;
        Ok(r)
    }

    /// Handles one data-plane event (see [`Core::handle_event`]).
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn handle_event(&mut self, ev: Event, now: Instant) -> Result<(), DriverError> {
        self.core.handle_event(ev, now)?;
        self.pump()
    }

    /// Runs what is due at `now` (see [`Core::handle_timeout`]).
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DriverError> {
        self.core.handle_timeout(now)?;
        self.pump()
    }

    /// See [`Core::poll_timeout`].
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<DriverEvent> {
        self.core.take_events()
    }

    /// Waits up to `timeout` for one data-plane event and handles it, then handles whatever else
    /// is already queued, and runs the timers. Returns whether an event was handled.
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, DriverError> {
        let now = Instant::now();
        self.handle_timeout(now)?;
        let mut wait = match self.core.poll_timeout() {
            Some(t) => timeout.min(t.saturating_duration_since(now)),
            None => timeout,
        };
        if self.unsent() > 0 {
            // Commands wait for room: come back soon to hand them over.
            wait = wait.min(Duration::from_millis(1));
        }
        let first = match self.handle.events().recv_timeout(wait) {
            Ok(ev) => ev,
            Err(_) => {
                self.handle_timeout(Instant::now())?;
                return Ok(false);
            }
        };
        self.core.handle_event(first, Instant::now())?;
        while let Ok(ev) = self.handle.events().try_recv() {
            self.core.handle_event(ev, Instant::now())?;
        }
        self.handle_timeout(Instant::now())?;
        Ok(true)
    }

    /// See [`Core::puzzle_solved`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn puzzle_solved(
        &mut self,
        ike_sa: IkeSaId,
        answer: PuzzleAnswer,
        now: Instant,
    ) -> Result<(), DriverError> {
        self.core.puzzle_solved(ike_sa, answer, now)?;
        self.pump()
    }

    /// See [`Core::refresh_counters`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn refresh_counters(&mut self, now: Instant) -> Result<(), DriverError> {
        self.core.refresh_counters(now)?;
        self.pump()
    }

    /// See [`Core::remove_endpoint`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn remove_endpoint(&mut self, id: EndpointId, now: Instant) -> Result<bool, DriverError> {
        let r = self.core.remove_endpoint(id, now)?;
        self.pump()?;
        Ok(r)
    }

    /// See [`Core::replace_endpoint`].
    pub fn replace_endpoint(&mut self, id: EndpointId, ep: Endpoint) -> bool {
        self.core.replace_endpoint(id, ep)
    }

    /// See [`Core::rekey_child_sa`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn rekey_child_sa(
        &mut self,
        endpoint: EndpointId,
        spi_in: u32,
        now: Instant,
    ) -> Result<bool, DriverError> {
        let r = self.core.rekey_child_sa(endpoint, spi_in, now)?;
        self.pump()?;
        Ok(r)
    }

    /// See [`Core::delete_child_sa`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn delete_child_sa(
        &mut self,
        endpoint: EndpointId,
        spi_in: u32,
        now: Instant,
    ) -> Result<bool, DriverError> {
        let r = self.core.delete_child_sa(endpoint, spi_in, now)?;
        self.pump()?;
        Ok(r)
    }

    /// See [`Core::create_child_sas`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn create_child_sas(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let n = self.core.create_child_sas(endpoint, now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::check_liveness`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn check_liveness(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let n = self.core.check_liveness(endpoint, now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::rekey_child_sas`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn rekey_child_sas(&mut self, now: Instant) -> Result<usize, DriverError> {
        let n = self.core.rekey_child_sas(now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::rekey_child_sas_of`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn rekey_child_sas_of(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let n = self.core.rekey_child_sas_of(endpoint, now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::rekey_ike_sas`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn rekey_ike_sas(&mut self, now: Instant) -> Result<usize, DriverError> {
        let n = self.core.rekey_ike_sas(now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::rekey_ike_sas_of`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn rekey_ike_sas_of(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let n = self.core.rekey_ike_sas_of(endpoint, now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::delete_ike_sas`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn delete_ike_sas(&mut self, now: Instant) -> Result<usize, DriverError> {
        let n = self.core.delete_ike_sas(now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::delete_ike_sas_of`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn delete_ike_sas_of(
        &mut self,
        endpoint: EndpointId,
        now: Instant,
    ) -> Result<usize, DriverError> {
        let n = self.core.delete_ike_sas_of(endpoint, now)?;
        self.pump()?;
        Ok(n)
    }

    /// See [`Core::delete_all`].
    ///
    /// # Errors
    /// See [`pump`](Self::pump).
    pub fn delete_all(&mut self) -> Result<(), DriverError> {
        self.core.delete_all()?;
        self.pump()
    }
}
