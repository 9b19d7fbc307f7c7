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
    /// Reaps if enough finished entries have accumulated.
    pub(super) fn maybe_reap(&mut self) {
        let dead_sessions = self.sessions.iter().filter(|(_, s)| !s.alive()).count();
        let dead_children = self
            .children
            .iter()
            .filter(|(_, c)| !c.inbound_ok && !c.outbound_ok)
            .count();
        if dead_sessions + dead_children >= REAP_BATCH {
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
            if !child_used.contains(&c) {
                self.children.remove(c);
            }
        }
        for s in self.sessions.handles() {
            if !session_used.contains(&s) {
                self.sessions.remove(s);
            }
        }
        for cs in self.conns.values_mut() {
            cs.session = cs.session.filter(|s| session_used.contains(s));
        }
    }
}
