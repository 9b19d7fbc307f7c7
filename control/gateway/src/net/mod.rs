//! Links, addresses and routes over rtnetlink.
//!
//! [`Netlink`] is a small synchronous client on one NETLINK_ROUTE socket: it finds the gateway's
//! TUN device by name, sets it up with an MTU, gives it addresses and adds and deletes the routes
//! that lead into it, IPv4 and IPv6. Each call waits for the kernel's acknowledgement (or, for a
//! dump, its end) and turns a refusal into [`NetlinkError::Kernel`] with the errno. [`RouteSet`]
//! remembers the routes the gateway installed so that it can remove them again at exit.

mod rtnl;
mod socket;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use socket::{Netlink, NetlinkError};

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route out of one interface, without a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination prefix (its host bits must be zero for IPv4; the kernel refuses it
    /// otherwise).
    pub dst: IpAddr,
    pub prefix_len: u8,
    /// The output interface's index.
    pub oif: u32,
    /// The preferred source address for traffic the host sends along the route (RTA_PREFSRC).
    pub src: Option<IpAddr>,
    /// The routing table, [`MAIN_TABLE`] unless chosen.
    pub table: u32,
    /// The route's metric (priority); `None` lets the kernel choose (0 for IPv4, 1024 for IPv6).
    pub metric: Option<u32>,
}

impl Route {
    /// A route to `dst/prefix_len` out of `oif` in the main table, no source, default metric.
    pub fn new(dst: IpAddr, prefix_len: u8, oif: u32) -> Route {
        Route {
            dst,
            prefix_len,
            oif,
            src: None,
            table: MAIN_TABLE,
            metric: None,
        }
    }
}

/// What a [`RouteSet`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteSetStats {
    /// Successful installs (installing a route twice counts twice).
    pub installed: u64,
    /// Successful removals (a route that was already gone counts as removed).
    pub removed: u64,
    /// Installs and removals the kernel refused or that failed otherwise.
    pub failed: u64,
}

/// The routes the gateway installed, so that it removes exactly those again, one by one or all
/// of them at exit.
#[derive(Debug, Default)]
pub struct RouteSet {
    routes: Vec<Route>,
    stats: RouteSetStats,
}

impl RouteSet {
    pub fn new() -> RouteSet {
        RouteSet::default()
    }

    /// Adds `route` to the kernel and remembers it (once, however often it is installed).
    pub fn install(&mut self, netlink: &mut Netlink, route: Route) -> Result<(), NetlinkError> {
        if let Err(e) = netlink.add_route(&route) {
            self.stats.failed += 1;
            return Err(e);
        }
        self.stats.installed += 1;
        if !self.routes.contains(&route) {
            self.routes.push(route);
        }
        Ok(())
    }

    /// Deletes `route` from the kernel and forgets it: `Ok(true)` when it did; `Ok(false)`, and
    /// nothing sent, for a route this set did not install. A route whose delete failed stays
    /// remembered.
    pub fn remove(&mut self, netlink: &mut Netlink, route: &Route) -> Result<bool, NetlinkError> {
        let Some(at) = self.routes.iter().position(|r| r == route) else {
            return Ok(false);
        };
        if let Err(e) = netlink.del_route(route) {
            self.stats.failed += 1;
            return Err(e);
        }
        self.stats.removed += 1;
        self.routes.remove(at);
        Ok(true)
    }

    /// Deletes every remembered route, trying all of them even when some fail. The ones that
    /// failed stay remembered, and the first failure is returned.
    pub fn clear(&mut self, netlink: &mut Netlink) -> Result<(), NetlinkError> {
        let mut first_error = None;
        let mut kept = Vec::new();
        for route in std::mem::take(&mut self.routes) {
            match netlink.del_route(&route) {
                Ok(()) => self.stats.removed += 1,
                Err(e) => {
                    self.stats.failed += 1;
                    first_error.get_or_insert(e);
                    kept.push(route);
                }
            }
        }
        self.routes = kept;
        first_error.map_or(Ok(()), Err)
    }

    /// The routes installed and not yet removed, in the order they were first installed.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn stats(&self) -> RouteSetStats {
        self.stats
    }
}
