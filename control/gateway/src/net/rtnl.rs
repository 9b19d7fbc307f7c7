//! Link, address and route requests: building the rtnetlink messages and reading the answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError, Route};

/// The longest interface name the kernel accepts (IFNAMSIZ less the terminating NUL).
const IFNAME_MAX: usize = 15;

impl Netlink {
    /// The index of the link called `name`; [`NetlinkError::NoSuchLink`] when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        const OP: &str = "get link";
        if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
            return Err(NetlinkError::NoSuchLink(name.to_owned()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let answers = match self.request(OP, RouteNetlinkMessage::GetLink(msg), 0) {
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => {
                return Err(NetlinkError::NoSuchLink(name.to_owned()));
            }
            other => other?,
        };
        answers
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) if link.header.index != 0 => {
                    Some(link.header.index)
                }
                _ => None,
            })
            .ok_or(NetlinkError::Malformed { op: OP })
    }

    /// Sets the link administratively up and, if given, its MTU.
    pub fn set_link_up(&mut self, index: u32, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
        self.request("set link up", RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    /// Sets the link administratively down.
    pub fn set_link_down(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.request("set link down", RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    /// Adds `addr/prefix_len` to the link. An address the link already has is not an error.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        match self.request("add address", RouteNetlinkMessage::NewAddress(msg), flags) {
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::EEXIST => Ok(()),
            other => other.map(drop),
        }
    }

    /// Adds the route, or replaces the one with the same destination, table and metric, so
    /// adding the same route again is not an error.
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let mut msg = route_message(route);
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        // A route straight out of a device is link scope for IPv4; IPv6 has only universe.
        msg.header.scope = match route.dst {
            IpAddr::V4(_) => RouteScope::Link,
            IpAddr::V6(_) => RouteScope::Universe,
        };
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.request("add route", RouteNetlinkMessage::NewRoute(msg), flags)
            .map(drop)
    }

    /// Deletes the route. A route that is already gone (ESRCH, ENOENT), or whose device is
    /// (ENODEV), is not an error.
    pub fn del_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let mut msg = route_message(route);
        // Match whatever protocol, scope and type the kernel has for it (as `ip route del`).
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        match self.request("delete route", RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(NetlinkError::Kernel { errno, .. })
                if [libc::ESRCH, libc::ENOENT, libc::ENODEV].contains(&errno) =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// The unicast routes in the main table (254) whose output interface is `index`, IPv4 then
    /// IPv6, as the kernel reports them. That includes the routes the kernel adds itself (the
    /// prefix of an address, `fe80::/64`), and the metric the kernel filled in (IPv6 routes
    /// always have one, 1024 unless chosen), so compare destinations, not whole [`Route`]s.
    pub fn routes(&mut self, index: u32) -> Result<Vec<Route>, NetlinkError> {
        const OP: &str = "dump routes";
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let answers = self.request(OP, RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
            for answer in answers {
                let RouteNetlinkMessage::NewRoute(msg) = answer else {
                    return Err(NetlinkError::Malformed { op: OP });
                };
                if msg.header.address_family != family {
                    return Err(NetlinkError::Malformed { op: OP });
                }
                let route = parse_route(&msg).ok_or(NetlinkError::Malformed { op: OP })?;
                if msg.header.kind == RouteType::Unicast
                    && route.table == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && route.oif == index
                {
                    routes.push(route);
                }
            }
        }
        Ok(routes)
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The part of an add and a delete request that names the route.
fn route_message(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(route.dst);
    msg.header.destination_prefix_length = route.prefix_len;
    // The header has eight bits of table; RTA_TABLE below carries the full number.
    msg.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    let attrs = &mut msg.attributes;
    if route.prefix_len != 0 {
        attrs.push(RouteAttribute::Destination(RouteAddress::from(route.dst)));
    }
    attrs.push(RouteAttribute::Oif(route.oif));
    attrs.extend(route.src.map(|s| RouteAttribute::PrefSource(s.into())));
    attrs.extend(route.metric.map(RouteAttribute::Priority));
    attrs.push(RouteAttribute::Table(route.table));
    msg
}

/// A dumped route as a [`Route`]; `oif` 0 when it has none (multipath, blackhole). `None` when
/// an address does not match the message's family.
fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let v6 = match msg.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let ip = |a: &RouteAddress| match (a, v6) {
        (RouteAddress::Inet(a), false) => Some(IpAddr::V4(*a)),
        (RouteAddress::Inet6(a), true) => Some(IpAddr::V6(*a)),
        _ => None,
    };
    let mut route = Route {
        dst: if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        },
        prefix_len: msg.header.destination_prefix_length,
        oif: 0,
        src: None,
        table: u32::from(msg.header.table),
        metric: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => route.dst = ip(a)?,
            RouteAttribute::PrefSource(a) => route.src = Some(ip(a)?),
            RouteAttribute::Oif(i) => route.oif = *i,
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Priority(m) => route.metric = Some(*m),
            _ => {}
        }
    }
    Some(route)
}
