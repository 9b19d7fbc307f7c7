//! Authentication of the IKE SA in IKE_AUTH (RFC 7296 §2.15), behind [`Authenticator`].
//!
//! The session computes what each AUTH payload covers ([`SignedOctets`]) and leaves the method
//! to the authenticator in [`super::Config::auth`]. [`PskAuth`], the shared key MIC, is the one
//! implementation so far. The shape leaves room for digital signatures (RFC 7427: a signature
//! over [`SignedOctets::concat`] with the signer's key, verified against the peer's certificate
//! for [`SignedOctets::id`]) and for EAP (RFC 7296 §2.16: the shared key MIC keyed with the MSK
//! once EAP is done); both will need more payloads (CERT, CERTREQ, EAP) handed to them.

use core::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::ike::crypto::{PrfAlg, SecretBytes};
use crate::ike::wire::{AuthMethod, Identity};

/// The PSK key pad (RFC 7296 §2.15).
const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// What one side's AUTH payload covers (RFC 7296 §2.15): its SignedOctets, RealMessage |
/// Nonce of the peer | prf(SK_p, RestOfIDPayload), and the identity it proves.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct SignedOctets<'a> {
    /// The IKE SA's PRF (keys the shared key MIC, RFC 7296 §2.15).
    pub prf: PrfAlg,
    /// RealMessage1 for the initiator's AUTH, RealMessage2 for the responder's.
    pub real_message: &'a [u8],
    /// The other side's nonce (NonceRData, NonceIData).
    pub nonce: &'a [u8],
    /// MACedIDForI / MACedIDForR: prf(SK_pi / SK_pr, RestOfIDPayload).
    pub maced_id: &'a [u8],
    /// The identity the AUTH proves (IDi or IDr).
    pub id: &'a Identity,
}

impl SignedOctets<'_> {
    /// The octets as one string, RealMessage | Nonce | MACedID (what RFC 7427 signs).
    pub fn concat(&self) -> Vec<u8> {
        [self.real_message, self.nonce, self.maced_id].concat()
    }
}

impl fmt::Debug for SignedOctets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The MAC'd ID is keyed with SK_p: lengths only.
        f.debug_struct("SignedOctets")
            .field("prf", &self.prf)
            .field("real_message_len", &self.real_message.len())
            .field("nonce_len", &self.nonce.len())
            .field("maced_id_len", &self.maced_id.len())
            .field("id", self.id)
            .finish()
    }
}

/// Why an AUTH payload could not be made or was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The peer used an Auth Method we do not accept from it.
    Method(AuthMethod),
    /// The Authentication Data does not prove the identity.
    Mismatch,
    /// A local step failed (should not happen).
    Internal(&'static str),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Method(m) => write!(f, "auth method {m:?} not accepted"),
            AuthError::Mismatch => f.write_str("authentication data does not match"),
            AuthError::Internal(s) => write!(f, "authentication: {s}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// How the IKE SA is authenticated (RFC 7296 §2.15): makes our AUTH payload and checks the
/// peer's. Shared by every session of a configuration, hence `Send + Sync`; implementations
/// keep their secrets out of `Debug`.
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// The Auth Method of our AUTH payload (RFC 7296 §3.8).
    fn method(&self) -> AuthMethod;

    /// Our Authentication Data over our side's octets.
    ///
    /// # Errors
    /// [`AuthError::Internal`].
    fn sign(&self, octets: &SignedOctets<'_>) -> Result<Vec<u8>, AuthError>;

    /// Accepts the peer's AUTH payload (`method`, `data`) over the peer's side's octets.
    ///
    /// # Errors
    /// [`AuthError`]: the session answers AUTHENTICATION_FAILED (RFC 7296 §2.21.2).
    fn verify(
        &self,
        octets: &SignedOctets<'_>,
        method: AuthMethod,
        data: &[u8],
    ) -> Result<(), AuthError>;
}

/// A pre-shared key, used in both directions (RFC 7296 §2.15): AUTH =
/// prf(prf(Shared Secret, "Key Pad for IKEv2"), SignedOctets). Wiped on drop, redacted in
/// `Debug`, compared in constant time.
pub struct PskAuth {
    key: SecretBytes,
}

impl PskAuth {
    /// An authenticator for this key.
    pub fn new(psk: &[u8]) -> PskAuth {
        PskAuth {
            key: SecretBytes::from_slice(psk),
        }
    }

    /// As [`PskAuth::new`], ready for [`super::Config::auth`].
    pub fn shared(psk: &[u8]) -> Arc<dyn Authenticator> {
        Arc::new(PskAuth::new(psk))
    }

    fn mic(&self, o: &SignedOctets<'_>) -> Result<SecretBytes, AuthError> {
        let err = |_| AuthError::Internal("prf");
        let key = o.prf.prf(self.key.expose(), &[KEY_PAD]).map_err(err)?;
        o.prf
            .prf(key.expose(), &[o.real_message, o.nonce, o.maced_id])
            .map_err(err)
    }
}

impl fmt::Debug for PskAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PskAuth(<redacted>)")
    }
}

impl Authenticator for PskAuth {
    fn method(&self) -> AuthMethod {
        AuthMethod::SHARED_KEY_MIC
    }

    fn sign(&self, octets: &SignedOctets<'_>) -> Result<Vec<u8>, AuthError> {
        Ok(self.mic(octets)?.expose().to_vec())
    }

    fn verify(
        &self,
        octets: &SignedOctets<'_>,
        method: AuthMethod,
        data: &[u8],
    ) -> Result<(), AuthError> {
        if method != AuthMethod::SHARED_KEY_MIC {
            return Err(AuthError::Method(method));
        }
        let expected = self.mic(octets)?;
        if bool::from(expected.expose().ct_eq(data)) {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn octets(id: &Identity) -> SignedOctets<'_> {
        SignedOctets {
            prf: PrfAlg::HmacSha256,
            real_message: b"RealMessage1",
            nonce: b"NonceRData",
            maced_id: b"MACedIDForI",
            id,
        }
    }

    /// RFC 7296 §2.15 computed independently: prf(prf(PSK, pad), octets).
    #[test]
    fn psk_mic_is_the_rfc_7296_2_15_composition() {
        let id = Identity::Fqdn(b"initiator.example".to_vec());
        let o = octets(&id);
        let a = PskAuth::new(b"secret");
        let pad = PrfAlg::HmacSha256
            .prf(b"secret", &[b"Key Pad for IKEv2"])
            .unwrap();
        let want = PrfAlg::HmacSha256
            .prf(pad.expose(), &[&o.concat()])
            .unwrap();
        let got = a.sign(&o).unwrap();
        assert_eq!(got, want.expose());
        assert_eq!(a.method(), AuthMethod::SHARED_KEY_MIC);
        assert_eq!(a.verify(&o, AuthMethod::SHARED_KEY_MIC, &got), Ok(()));
    }

    #[test]
    fn psk_verify_refuses_other_data_methods_and_keys() {
        let id = Identity::Fqdn(b"initiator.example".to_vec());
        let o = octets(&id);
        let a = PskAuth::new(b"secret");
        let mut good = a.sign(&o).unwrap();
        assert_eq!(
            a.verify(&o, AuthMethod::DIGITAL_SIGNATURE, &good),
            Err(AuthError::Method(AuthMethod::DIGITAL_SIGNATURE))
        );
        assert_eq!(
            a.verify(&o, AuthMethod::SHARED_KEY_MIC, &good[..31]),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            a.verify(&o, AuthMethod::SHARED_KEY_MIC, &[]),
            Err(AuthError::Mismatch)
        );
        let other = PskAuth::new(b"secreT");
        assert_eq!(
            other.verify(&o, AuthMethod::SHARED_KEY_MIC, &good),
            Err(AuthError::Mismatch)
        );
        good[0] ^= 1;
        assert_eq!(
            a.verify(&o, AuthMethod::SHARED_KEY_MIC, &good),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let id = Identity::Fqdn(b"initiator.example".to_vec());
        let a = PskAuth::shared(b"hunter2-hunter2");
        assert_eq!(format!("{a:?}"), "PskAuth(<redacted>)");
        let s = format!("{:?}", octets(&id));
        let maced = format!("{:?}", b"MACedIDForI".as_slice());
        assert!(!s.contains(&maced) && !s.contains("MACedID"), "{s}");
        assert!(s.contains("maced_id_len: 11"), "{s}");
    }
}
