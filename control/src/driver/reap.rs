//! Forgetting finished sessions and Child SAs, so a gateway that runs for months (rekeys every
//! hour, floods of half-open IKE SAs) keeps bounded state.
//!
//! A session is finished when it is no longer alive and nothing refers to it but its own
//! (finished) Child SAs; a Child SA when neither of its ESP SAs is installed and no pending
//! install, switch, grace period or move refers to it. Sessions that ended and Child SAs whose
//! SAs were deleted are candidates; a reap looks at the candidates only (not at every entry),
//! removes those that are finished and keeps the others for the next one. A handle anything
//! still holds turns stale and finds nothing.

use std::collections::HashSet;

use super::*;

/// A reap runs once this many candidates have accumulated.
const REAP_BATCH: usize = 64;

impl Core {
    /// Notes that Child SA `c` may be finished.
    pub(super) fn reap_child_later(&mut self, c: ChildSaId) {
        self.reap_children.push(c);
    }

    /// Notes that session `i` may be finished.
    pub(super) fn reap_session_later(&mut self, i: IkeSaId) {
        self.reap_sessions.push(i);
    }

    /// Reaps once enough candidates have accumulated. The cost is the candidates plus the
    /// in-flight lists (pending acks, grace periods, switches, moves), never the whole table.
    pub(super) fn maybe_reap(&mut self) {
        if self.reap_children.len() + self.reap_sessions.len() >= self.reap_floor + REAP_BATCH {
            self.reap();
        }
    }

    /// Drops every finished candidate.
    pub(super) fn reap(&mut self) {
        // What the in-flight work still refers to.
        let mut child_used: HashSet<ChildSaId> = self.retiring.keys().collect();
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
        let mut session_used: HashSet<IkeSaId> = self.switches.iter().map(|w| w.session).collect();
        session_used.extend(self.child_rekeying.iter().map(|r| r.0));
        session_used.extend(self.ike_rekeying.iter().copied());
        session_used.extend(self.migrations.iter().map(|m| m.session()));

        let mut keep_children = Vec::new();
        for c in std::mem::take(&mut self.reap_children) {
            let Some(ch) = self.children.get(c) else {
                continue;
            };
            if ch.inbound_ok || ch.outbound_ok || child_used.contains(&c) {
                keep_children.push(c);
                continue;
            }
            self.forget_child(c);
        }
        let mut keep_sessions = Vec::new();
        for i in std::mem::take(&mut self.reap_sessions) {
            let Some(st) = self.sessions.get(i) else {
                continue;
            };
            let children = &self.children;
            let busy = st.alive()
                || session_used.contains(&i)
                || st.children.iter().any(|&c| children.contains(c));
            if busy {
                keep_sessions.push(i);
                continue;
            }
            self.forget_session(i);
        }
        // Candidates that are not finished yet wait for the next reap; the batch threshold
        // then counts only new ones.
        self.reap_children = keep_children;
        self.reap_sessions = keep_sessions;
        self.reap_floor = self.reap_children.len() + self.reap_sessions.len();
        self.forget_removed_endpoints();
    }

    pub(super) fn forget_child(&mut self, c: ChildSaId) {
        let Some(ch) = self.children.remove(c) else {
            return;
        };
        if !ch.installed_once {
            // Never in a worker (its install failed or was overtaken): its SPI is free again.
            self.spi_pool.release(ch.spi_in);
        }
        if self.child_by_spi_in.get(&ch.spi_in) == Some(&c) {
            self.child_by_spi_in.remove(&ch.spi_in);
        }
        if let Some(v) = self.child_by_spi_out.get_mut(&ch.spi_out) {
            v.retain(|x| *x != c);
            if v.is_empty() {
                self.child_by_spi_out.remove(&ch.spi_out);
            }
        }
        if let Some(st) = self.sessions.get_mut(ch.session) {
            st.children.retain(|x| *x != c);
            if !st.alive() {
                // Its last Child SA may have been all that kept it.
                self.reap_sessions.push(ch.session);
            }
        }
    }

    fn forget_session(&mut self, i: IkeSaId) {
        let Some(st) = self.sessions.remove(i) else {
            return;
        };
        if let Some(k) = st.indexed_spis
            && self.responders.get(&k) == Some(&i)
        {
            self.responders.remove(&k);
        }
        if let Some(v) = self.ep_sessions.get_mut(&st.endpoint) {
            v.remove(&i);
            if v.is_empty() {
                self.ep_sessions.remove(&st.endpoint);
            }
        }
        // Connections that named it find nothing now (stale handle); the current one forgets.
        if let Some(conn) = st.conn
            && let Some(c) = self.conns.get_mut(&conn)
            && c.session == Some(i)
        {
            c.session = None;
        }
    }
}
