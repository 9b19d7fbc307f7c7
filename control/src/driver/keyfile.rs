//! Wireshark key log of the driver's IKE and ESP SAs (`--keylog`).

use super::*;
use crate::ike::session::keylog;

/// Wireshark UAT file of IKE SA keys.
pub const KEYLOG_IKE_FILE: &str = "ikev2_decryption_table";

/// Wireshark UAT file of ESP SA keys.
pub const KEYLOG_ESP_FILE: &str = "esp_sa";

/// One line for a Wireshark key file, produced by the core for the runtime to write (the core
/// writes no file). The line holds keys: it is wiped on drop and never printed.
pub struct KeyLine {
    /// [`KEYLOG_IKE_FILE`] or [`KEYLOG_ESP_FILE`].
    pub file: &'static str,
    /// The SA it describes: a line already written under this name is not written again (both
    /// ends of a demo report the same SA).
    pub key: String,
    /// The line.
    pub line: zeroize::Zeroizing<String>,
}

impl fmt::Debug for KeyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLine")
            .field("file", &self.file)
            .field("key", &self.key)
            .field("line", &"<redacted>")
            .finish()
    }
}

impl Core {
    /// Produces key log lines of every IKE SA (on IKE_AUTH and IKE SA rekeys) and Child SA
    /// (both ESP directions, rekeyed ones included) from now on. Keys are secrets: turn this on
    /// only when the operator asked for a key log.
    pub fn set_keylog(&mut self, on: bool) {
        self.keylog = on;
    }

    fn keylog_write(&mut self, file: &'static str, key: String, line: String) {
        self.keylines.push_back(KeyLine {
            file,
            key,
            line: zeroize::Zeroizing::new(line),
        });
    }

    /// Key log of the current IKE SA of session `index`.
    pub(super) fn keylog_ike(&mut self, index: IkeSaId) {
        if !self.keylog {
            return;
        }
        let s = &self.sessions[index];
        let Some(line) = s.session.keylog_ike() else {
            return;
        };
        // The two SPIs lead the line.
        let key = format!("ike {}", line.get(..33).unwrap_or(&line));
        self.keylog_write(KEYLOG_IKE_FILE, key, line);
    }

    /// Key log of both ESP SAs of a Child SA carried on `conn`.
    pub(super) fn keylog_child(&mut self, c: &ChildSa, conn: Conn) {
        if !self.keylog {
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
        self.keylog_write(KEYLOG_ESP_FILE, kin, inb);
        self.keylog_write(KEYLOG_ESP_FILE, kout, out);
    }
}
