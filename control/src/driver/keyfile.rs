//! Wireshark key log of the driver's IKE and ESP SAs (`--keylog`).

use super::*;
use crate::ike::session::keylog;

/// Wireshark UAT file of IKE SA keys.
pub const KEYLOG_IKE_FILE: &str = "ikev2_decryption_table";

/// Wireshark UAT file of ESP SA keys.
pub const KEYLOG_ESP_FILE: &str = "esp_sa";

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
    /// Writes the keys of every IKE SA (on IKE_AUTH and IKE SA rekeys) and Child SA (both ESP
    /// directions, rekeyed ones included) from now on to `dir`, in Wireshark's
    /// `ikev2_decryption_table` and `esp_sa` files (created with mode 0600, appended to).
    /// Keys are secrets: call this only when the operator asked for a key log.
    ///
    /// # Errors
    /// If the files cannot be created.
    pub fn set_keylog(&mut self, dir: &Path) -> Result<(), DriverError> {
        for name in [KEYLOG_IKE_FILE, KEYLOG_ESP_FILE] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(dir.join(name))
                .map_err(|e| DriverError(format!("key log {}: {e}", dir.join(name).display())))?;
        }
        self.keylog = Some(dir.to_path_buf());
        Ok(())
    }

    /// Appends a key log line unless it was written before under `key`.
    pub(super) fn keylog_write(&mut self, endpoint: usize, file: &str, key: String, line: &str) {
        let Some(dir) = &self.keylog else {
            return;
        };
        if self.keylog_seen.contains(&key) {
            return;
        }
        match append_secret(&dir.join(file), line) {
            Ok(()) => {
                self.keylog_seen.insert(key);
            }
            Err(e) => self.events.push(DriverEvent::Failed {
                endpoint,
                reason: format!("key log {file}: {e}"),
            }),
        }
    }

    /// Key log of the current IKE SA of session `index`.
    pub(super) fn keylog_ike(&mut self, index: usize) {
        if self.keylog.is_none() {
            return;
        }
        let s = &self.sessions[index];
        let endpoint = s.endpoint;
        let Some(line) = s.session.keylog_ike() else {
            return;
        };
        // The two SPIs lead the line.
        let key = format!("ike {}", line.get(..33).unwrap_or(&line));
        self.keylog_write(endpoint, KEYLOG_IKE_FILE, key, &line);
    }

    /// Key log of both ESP SAs of a Child SA carried on `conn`.
    pub(super) fn keylog_child(&mut self, endpoint: usize, c: &ChildSa, conn: Conn) {
        if self.keylog.is_none() {
            return;
        }
        let (local, peer) = self
            .conns
            .get(&conn)
            .map_or((None, None), |cs| (Some(cs.local.ip()), Some(cs.peer.ip())));
        let inb = keylog::esp_line(peer, local, c.spi_in, c.suite, c.keymat_in.expose());
        let out = keylog::esp_line(local, peer, c.spi_out, c.suite, c.keymat_out.expose());
        let (kin, kout) = (
            format!("esp {peer:?} {local:?} {}", c.spi_in),
            format!("esp {local:?} {peer:?} {}", c.spi_out),
        );
        self.keylog_write(endpoint, KEYLOG_ESP_FILE, kin, &inb);
        self.keylog_write(endpoint, KEYLOG_ESP_FILE, kout, &out);
    }
}
