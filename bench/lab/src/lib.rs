//! Lab code of iketcp, kept out of the product libraries: `iketcp demo` (two gateways in one
//! process over the mem port), the traffic generator it and the pipeline bench use, and pcap
//! capture of a port's packets.

pub mod capture;
pub mod demo;
pub mod traffic;
