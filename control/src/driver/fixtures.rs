//! Configurations for the driver's tests: two gateways with a PSK, FQDN identities and
//! documentation-range addresses and selectors (the lab crate's demo uses the same shape).

use std::net::Ipv4Addr;

use iketcp_dataplane::crypto::Suite;

use crate::ike::crypto::{DhGroup, EncrAlg, IkeSuite, PrfAlg};
use crate::ike::session::{Config, PskAuth, SpiPool};
use crate::ike::wire::{Identity, TrafficSelector, TsRange};

/// The responder gateway's outer address.
pub(super) const RESPONDER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The initiator gateway's outer address.
pub(super) const INITIATOR_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn net(a: [u8; 3]) -> TrafficSelector {
    TrafficSelector::Ipv4(TsRange {
        ip_protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start_addr: Ipv4Addr::new(a[0], a[1], a[2], 0),
        end_addr: Ipv4Addr::new(a[0], a[1], a[2], 255),
    })
}

/// Initiator and responder configurations with this ESP suite.
pub(super) fn configs(suite: Suite, esn: bool) -> Result<(Config, Config), String> {
    let ike = IkeSuite::new(
        EncrAlg::AesGcm16_256,
        PrfAlg::HmacSha256,
        None,
        DhGroup::Curve25519,
    )
    .map_err(|e| format!("{e:?}"))?;
    let i = Config {
        local_id: Identity::Fqdn(b"initiator.iketcp.test".to_vec()),
        remote_id: Identity::Fqdn(b"responder.iketcp.test".to_vec()),
        auth: PskAuth::shared(b"iketcp test pre-shared key"),
        ike_proposals: vec![ike],
        esp_proposals: vec![(suite.into(), esn)],
        ts_local: vec![net([198, 51, 100])],
        ts_remote: vec![net([203, 0, 113])],
        spi_pool: SpiPool::new(),
    };
    let r = Config {
        local_id: i.remote_id.clone(),
        remote_id: i.local_id.clone(),
        ts_local: i.ts_remote.clone(),
        ts_remote: i.ts_local.clone(),
        ..i.clone()
    };
    Ok((i, r))
}
