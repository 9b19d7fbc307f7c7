//! strongSwan proposal strings: algorithm names joined by `-`, e.g.
//! `aes256gcm16-prfsha256-x25519` (IKE) or `aes256gcm16-x25519` (ESP with PFS). Several
//! algorithms of one kind mean "any of these": the proposal expands to their cartesian product,
//! in the order written (encryption, then integrity, PRF, DH group, ESN).

use iketcp_control::ike::crypto::{DhGroup, EncrAlg, EspSuite, IkeSuite, IntegAlg, PrfAlg};

/// Why a proposal was refused, and the byte offset in the proposal string of the token at
/// fault (0 when the proposal as a whole is at fault).
#[derive(Debug)]
pub(super) struct ProposalError {
    pub offset: usize,
    pub reason: String,
}

#[derive(Clone, Copy, Debug)]
enum Token {
    Encr(EncrAlg),
    Integ(IntegAlg),
    Prf(PrfAlg),
    Dh(DhGroup),
    Esn(bool),
}

fn token(t: &str) -> Option<Token> {
    Some(match t.to_ascii_lowercase().as_str() {
        "aes128" => Token::Encr(EncrAlg::AesCbc128),
        "aes256" => Token::Encr(EncrAlg::AesCbc256),
        "aes128gcm16" | "aes128gcm" => Token::Encr(EncrAlg::AesGcm16_128),
        "aes256gcm16" | "aes256gcm" => Token::Encr(EncrAlg::AesGcm16_256),
        "chacha20poly1305" => Token::Encr(EncrAlg::ChaCha20Poly1305),
        "sha256" | "sha2_256" => Token::Integ(IntegAlg::HmacSha256_128),
        "sha384" | "sha2_384" => Token::Integ(IntegAlg::HmacSha384_192),
        "sha512" | "sha2_512" => Token::Integ(IntegAlg::HmacSha512_256),
        "prfsha1" => Token::Prf(PrfAlg::HmacSha1),
        "prfsha256" => Token::Prf(PrfAlg::HmacSha256),
        "prfsha384" => Token::Prf(PrfAlg::HmacSha384),
        "prfsha512" => Token::Prf(PrfAlg::HmacSha512),
        "modp2048" => Token::Dh(DhGroup::Modp2048),
        "ecp256" => Token::Dh(DhGroup::Ecp256),
        "ecp384" => Token::Dh(DhGroup::Ecp384),
        "x25519" | "curve25519" => Token::Dh(DhGroup::Curve25519),
        "esn" => Token::Esn(true),
        "noesn" => Token::Esn(false),
        _ => return None,
    })
}

const KNOWN: &str = "encryption aes128gcm16 aes256gcm16 chacha20poly1305 aes128 aes256, \
                     integrity sha256 sha384 sha512, PRF prfsha256 prfsha384 prfsha512 prfsha1, \
                     DH x25519 ecp256 ecp384 modp2048";

/// The algorithms of one proposal string, by kind, each with the offset of its token.
#[derive(Default)]
struct Tokens {
    encr: Vec<(usize, EncrAlg)>,
    integ: Vec<(usize, IntegAlg)>,
    prf: Vec<(usize, PrfAlg)>,
    dh: Vec<(usize, DhGroup)>,
    esn: Vec<(usize, bool)>,
}

fn tokens(s: &str) -> Result<Tokens, ProposalError> {
    let mut out = Tokens::default();
    let mut offset = 0;
    for (i, t) in s.split('-').enumerate() {
        let at = offset;
        offset += t.len() + 1;
        if t.is_empty() {
            return Err(ProposalError {
                offset: at,
                reason: format!("algorithm {} is empty (stray '-')", i + 1),
            });
        }
        match token(t) {
            Some(Token::Encr(e)) => push_new(&mut out.encr, at, e),
            Some(Token::Integ(a)) => push_new(&mut out.integ, at, a),
            Some(Token::Prf(p)) => push_new(&mut out.prf, at, p),
            Some(Token::Dh(d)) => push_new(&mut out.dh, at, d),
            Some(Token::Esn(e)) => push_new(&mut out.esn, at, e),
            None => {
                return Err(ProposalError {
                    offset: at,
                    reason: format!(
                        "unknown algorithm {t:?} (algorithm {} of the proposal); known: {KNOWN}",
                        i + 1
                    ),
                });
            }
        }
    }
    Ok(out)
}

fn push_new<T: PartialEq>(v: &mut Vec<(usize, T)>, at: usize, x: T) {
    if !v.iter().any(|(_, y)| *y == x) {
        v.push((at, x));
    }
}

fn err(offset: usize, reason: impl Into<String>) -> ProposalError {
    ProposalError {
        offset,
        reason: reason.into(),
    }
}

/// The IKE suites of one proposal string.
pub(super) fn ike(s: &str) -> Result<Vec<IkeSuite>, ProposalError> {
    let t = tokens(s)?;
    if let Some(&(at, _)) = t.esn.first() {
        return Err(err(
            at,
            "esn/noesn belong in esp_proposals, not in IKE proposals",
        ));
    }
    let Some(&(_, first)) = t.encr.first() else {
        return Err(err(
            0,
            "no encryption algorithm (e.g. aes256gcm16 or chacha20poly1305)",
        ));
    };
    let aead = first.is_aead();
    if let Some(&(at, _)) = t.encr.iter().find(|(_, e)| e.is_aead() != aead) {
        return Err(err(
            at,
            "mixes AEAD and non-AEAD ciphers: write them as separate proposals",
        ));
    }
    let integs: Vec<Option<IntegAlg>> = if aead {
        if let Some(&(at, _)) = t.integ.first() {
            return Err(err(
                at,
                "an AEAD cipher takes no integrity algorithm (RFC 5282 §8): remove it",
            ));
        }
        vec![None]
    } else {
        if t.integ.is_empty() {
            return Err(err(
                0,
                "a CBC cipher needs an integrity algorithm (sha256, sha384 or sha512)",
            ));
        }
        t.integ.iter().map(|&(_, a)| Some(a)).collect()
    };
    let prfs: Vec<PrfAlg> = if !t.prf.is_empty() {
        t.prf.iter().map(|&(_, p)| p).collect()
    } else if aead {
        return Err(err(
            0,
            "an AEAD IKE proposal needs a PRF (prfsha256, prfsha384 or prfsha512)",
        ));
    } else {
        // As strongSwan: without a PRF, the one of each integrity algorithm's hash.
        let mut prfs = Vec::new();
        for &(_, a) in &t.integ {
            let p = match a {
                IntegAlg::HmacSha256_128 => PrfAlg::HmacSha256,
                IntegAlg::HmacSha384_192 => PrfAlg::HmacSha384,
                IntegAlg::HmacSha512_256 => PrfAlg::HmacSha512,
            };
            if !prfs.contains(&p) {
                prfs.push(p);
            }
        }
        prfs
    };
    if t.dh.is_empty() {
        return Err(err(
            0,
            "an IKE proposal needs a DH group (x25519, ecp256, ecp384 or modp2048)",
        ));
    }
    let mut out = Vec::new();
    for &(at, e) in &t.encr {
        for &i in &integs {
            for &p in &prfs {
                for &(_, d) in &t.dh {
                    let suite = IkeSuite::new(e, p, i, d).map_err(|e| err(at, e.to_string()))?;
                    out.push(suite);
                }
            }
        }
    }
    Ok(out)
}

/// One ESP proposal string.
#[derive(Debug)]
pub(super) struct EspProposal {
    /// Its ciphers, in order.
    pub suites: Vec<EspSuite>,
    /// ESN choices named by `esn`/`noesn` tokens; empty to take the connection's `esn` key.
    pub esn: Vec<bool>,
    /// DH groups named: a Child SA with PFS (RFC 7296 §1.3.1).
    pub dh: Vec<(usize, DhGroup)>,
}

/// The parts of one ESP proposal string.
pub(super) fn esp(s: &str) -> Result<EspProposal, ProposalError> {
    let t = tokens(s)?;
    if let Some(&(at, _)) = t.prf.first() {
        return Err(err(at, "a PRF has no place in an ESP proposal"));
    }
    if let Some(&(at, _)) = t.integ.first() {
        return Err(err(
            at,
            "ESP here uses only AEAD ciphers, which take no integrity algorithm: remove it",
        ));
    }
    if t.encr.is_empty() {
        return Err(err(
            0,
            "no encryption algorithm (aes256gcm16, aes128gcm16 or chacha20poly1305)",
        ));
    }
    let mut suites = Vec::new();
    for &(at, e) in &t.encr {
        suites.push(match e {
            EncrAlg::AesGcm16_128 => EspSuite::AesGcm16_128,
            EncrAlg::AesGcm16_256 => EspSuite::AesGcm16_256,
            EncrAlg::ChaCha20Poly1305 => EspSuite::ChaCha20Poly1305,
            EncrAlg::AesCbc128 | EncrAlg::AesCbc256 => {
                return Err(err(
                    at,
                    "AES-CBC is not supported for ESP: use aes256gcm16, aes128gcm16 or \
                     chacha20poly1305",
                ));
            }
        });
    }
    Ok(EspProposal {
        suites,
        esn: t.esn.iter().map(|&(_, e)| e).collect(),
        dh: t.dh,
    })
}

/// The IKE proposals when none are configured, most preferred first.
pub(super) const DEFAULT_IKE: [&str; 5] = [
    "aes256gcm16-prfsha256-x25519",
    "aes256gcm16-prfsha384-ecp384",
    "chacha20poly1305-prfsha256-x25519",
    "aes128gcm16-prfsha256-ecp256",
    "aes256gcm16-prfsha256-modp2048",
];

/// The ESP suites when none are configured (no PFS), most preferred first.
pub(super) const DEFAULT_ESP: [EspSuite; 3] = [
    EspSuite::AesGcm16_256,
    EspSuite::ChaCha20Poly1305,
    EspSuite::AesGcm16_128,
];

/// [`DEFAULT_IKE`] as suites (each string is valid; a test checks all five come out).
pub(super) fn default_ike() -> Vec<IkeSuite> {
    DEFAULT_IKE
        .iter()
        .filter_map(|s| ike(s).ok())
        .flatten()
        .collect()
}
