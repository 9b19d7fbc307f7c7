//! The IKEv2 cryptographic core.
//!
//! * [`alg`]: transform IDs (RFC 7296 §3.3.2), the [`IkeSuite`] of an IKE SA and the
//!   [`EspSuite`] of a Child SA.
//! * [`dh`]: key exchange for groups 14, 19, 20, 31 with peer validation (RFC 3526, RFC 5903,
//!   RFC 8031, RFC 6989).
//! * [`prf`]: PRF_HMAC_SHA1 / SHA2-256/384/512 and `prf+` (RFC 7296 §2.13, RFC 4868).
//! * [`integ`]: AUTH_HMAC_SHA2_* truncated ICVs (RFC 4868).
//! * [`keys`]: SKEYSEED, SK_*, Child SA KEYMAT and IKE SA rekey (RFC 7296 §2.14, §2.17, §2.18).
//! * [`sk`]: Encrypted payload protection (RFC 7296 §3.14, RFC 5282, RFC 7634 §3).
//!
//! Secrets are wiped on drop and redacted in `Debug` ([`SecretBytes`]). Nothing here parses IKE
//! payloads beyond the two Length fields the SK payload protection authenticates; the wire codec
//! lives in `super::wire`.

pub(crate) mod alg;
pub(crate) mod dh;
pub(crate) mod integ;
pub(crate) mod keys;
pub(crate) mod prf;
pub(crate) mod secret;
pub(crate) mod sk;

#[cfg(test)]
mod test_util;

pub use alg::{AlgError, DhGroup, EncrAlg, EspSuite, IkeSuite, IntegAlg, PrfAlg};
pub use dh::{DhError, KeyExchange, SharedSecret};
pub use integ::{IntegError, IntegKey};
pub use keys::{ChildKeyLengths, ChildSaKeys, IkeKeyLengths, IkeSaKeys, KeyError, Role, Skeyseed};
pub use prf::PrfError;
pub use secret::SecretBytes;
pub use sk::{SkCipher, SkError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<KeyExchange>();
        check::<SharedSecret>();
        check::<IkeSaKeys>();
        check::<ChildSaKeys>();
        check::<SkCipher>();
        check::<IntegKey>();
    }
}
