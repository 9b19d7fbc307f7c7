//! Forgetting finished sessions and Child SAs, so a gateway that runs for months (rekeys every
//! hour, floods of half-open IKE SAs) keeps bounded state.
//!
//! A session is finished when it is no longer alive and nothing refers to it but its own
//! (finished) Child SAs; a Child SA when neither of its ESP SAs is installed and no pending
//! install, switch, grace period or move refers to it. Finished entries leave their slabs; a
//! handle anything still holds turns stale and finds nothing.

use std::collections::HashSet;

use super::*;

/// Reaping runs once this many finished entries have accumulated (it is O(n)).
const REAP_BATCH: usize = 64;

impl Core {
    /// Reaps once enough sessions ended and SAs were deleted since the last time (a reap is
    /// O(n), so it runs every [`REAP_BATCH`] of them: amortised O(n / REAP_BATCH) each).
    pub(super) fn maybe_reap(&mut self) {
        if self.reap_hint >= REAP_BATCH {
            self.reap_hint = 0;
            self.reap();
        }
    }

    /// Drops every finished session and Child SA.
    pub(super) fn reap(&mut self) {
        // Child SAs something still refers to.
        let mut child_used: HashSet<ChildSaId> = self
            .children
            .iter()
            .filter(|(_, c)| c.inbound_ok || c.outbound_ok)
            .map(|(k, _)| k)
            .collect();
        child_used.extend(self.retiring.iter().map(|r| r.1));
        for w in &self.switches {
            child_used.insert(w.old);
            child_used.insert(w.new);
        }
        for p in self.pending.values() {
            if let Pending::Inbound { child, .. }
            | Pending::Outbound { child }
            | Pending::Moved { child, .. } = p
            {
                child_used.insert(*child);
            }
        }
        for m in &self.migrations {
            child_used.extend(m.children());
        }
        // Sessions something still refers to.
        let mut session_used: HashSet<IkeSaId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.alive())
            .map(|(k, _)| k)
            .collect();
        for (c, ch) in self.children.iter() {
            if child_used.contains(&c) {
                session_used.insert(ch.session);
            }
        }
        session_used.extend(self.switches.iter().map(|w| w.session));
        session_used.extend(self.child_rekeying.iter().map(|r| r.0));
        session_used.extend(self.ike_rekeying.iter().copied());
        session_used.extend(self.migrations.iter().map(|m| m.session()));

        for c in self.children.handles() {
            if child_used.contains(&c) {
                continue;
            }
            let Some(ch) = self.children.remove(c) else {
                continue;
            };
            if self.child_by_spi_in.get(&ch.spi_in) == Some(&c) {
                self.child_by_spi_in.remove(&ch.spi_in);
            }
            if let Some(v) = self.child_by_spi_out.get_mut(&ch.spi_out) {
                v.retain(|x| *x != c);
                if v.is_empty() {
                    self.child_by_spi_out.remove(&ch.spi_out);
                }
            }
        }
        for s in self.sessions.handles() {
            if !session_used.contains(&s) {
                if let Some(st) = self.sessions.remove(s)
                    && let Some(k) = st.indexed_spis
                    && self.responders.get(&k) == Some(&s)
                {
                    self.responders.remove(&k);
                }
                continue;
            }
            let children = &self.children;
            if let Some(st) = self.sessions.get_mut(s) {
                st.children.retain(|c| children.contains(*c));
            }
        }
        let sessions = &self.sessions;
        self.ep_sessions.retain(|_, v| {
            v.retain(|s| sessions.contains(*s));
            !v.is_empty()
        });
        for cs in self.conns.values_mut() {
            cs.session = cs.session.filter(|s| session_used.contains(s));
        }
    }
}
