//! Forgetting finished sessions and Child SAs, so a gateway that runs for months (rekeys every
//! hour, floods of half-open IKE SAs) keeps bounded state.
//!
//! Sessions and Child SAs live in vectors addressed by index; reaping drops the finished ones
//! and renumbers every reference. A session is finished when it is no longer alive and nothing
//! refers to it but its own (finished) Child SAs; a Child SA when neither of its ESP SAs is
//! installed and no pending install, switch, grace period or move refers to it.

use super::*;

/// Reaping runs once this many finished entries have accumulated (it is O(n)).
const REAP_BATCH: usize = 64;

/// Old index → new index (`None`: dropped).
fn renumber(keep: &[bool]) -> Vec<Option<usize>> {
    let mut next = 0;
    keep.iter()
        .map(|&k| {
            k.then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

impl Core {
    /// Reaps if enough finished entries have accumulated.
    pub(super) fn maybe_reap(&mut self) {
        let dead_sessions = self.sessions.iter().filter(|s| !s.alive()).count();
        let dead_children = self
            .children
            .iter()
            .filter(|c| !c.inbound_ok && !c.outbound_ok)
            .count();
        if dead_sessions + dead_children >= REAP_BATCH {
            self.reap();
        }
    }

    /// Drops every finished session and Child SA and renumbers the references.
    pub(super) fn reap(&mut self) {
        // Child SAs something still refers to.
        let mut child_used: Vec<bool> = self
            .children
            .iter()
            .map(|c| c.inbound_ok || c.outbound_ok)
            .collect();
        let mut mark = |c: usize| {
            if let Some(u) = child_used.get_mut(c) {
                *u = true;
            }
        };
        self.retiring.iter().for_each(|r| mark(r.1));
        for w in &self.switches {
            mark(w.old);
            mark(w.new);
        }
        for p in self.pending.values() {
            if let Pending::Inbound { child, .. }
            | Pending::Outbound { child }
            | Pending::Moved { child, .. } = p
            {
                mark(*child);
            }
        }
        for m in &self.migrations {
            m.children().for_each(&mut mark);
        }
        // Sessions something still refers to.
        let mut session_used: Vec<bool> = self.sessions.iter().map(|s| s.alive()).collect();
        let mut mark_s = |i: usize| {
            if let Some(u) = session_used.get_mut(i) {
                *u = true;
            }
        };
        for (c, ch) in self.children.iter().enumerate() {
            if child_used[c] {
                mark_s(ch.session);
            }
        }
        self.switches.iter().for_each(|w| mark_s(w.session));
        self.child_rekeying.iter().for_each(|r| mark_s(r.0));
        self.ike_rekeying.iter().for_each(|&i| mark_s(i));
        self.migrations.iter().for_each(|m| mark_s(m.session()));

        let s_map = renumber(&session_used);
        let c_map = renumber(&child_used);
        let mut k = 0;
        self.sessions.retain(|_| {
            k += 1;
            session_used[k - 1]
        });
        let mut k = 0;
        self.children.retain(|_| {
            k += 1;
            child_used[k - 1]
        });
        let s = |i: usize| s_map.get(i).copied().flatten();
        let c = |i: usize| c_map.get(i).copied().flatten();
        for ch in &mut self.children {
            // Kept Child SAs keep their session (marked above).
            ch.session = s(ch.session).unwrap_or(usize::MAX);
        }
        for cs in self.conns.values_mut() {
            cs.session = cs.session.and_then(s);
        }
        self.by_ike_sa = self
            .sessions
            .iter()
            .enumerate()
            .map(|(i, st)| (st.ike_sa, i))
            .collect();
        for r in &mut self.retiring {
            r.1 = c(r.1).unwrap_or(usize::MAX);
        }
        for w in &mut self.switches {
            w.session = s(w.session).unwrap_or(usize::MAX);
            w.old = c(w.old).unwrap_or(usize::MAX);
            w.new = c(w.new).unwrap_or(usize::MAX);
        }
        for r in &mut self.child_rekeying {
            r.0 = s(r.0).unwrap_or(usize::MAX);
        }
        for i in &mut self.ike_rekeying {
            *i = s(*i).unwrap_or(usize::MAX);
        }
        for p in self.pending.values_mut() {
            if let Pending::Inbound { child, .. }
            | Pending::Outbound { child }
            | Pending::Moved { child, .. } = p
            {
                *child = c(*child).unwrap_or(usize::MAX);
            }
        }
        for m in &mut self.migrations {
            m.renumber(&s, &c);
        }
    }
}
