//! Whole messages and bare payload chains.

use super::{
    Error, HEADER_LEN, Header, MAX_MESSAGE_LEN, MAX_PAYLOADS, Part, Payload, PayloadIter,
    PayloadType,
};

/// An IKE message: header and the outer payload chain. If the chain holds an SK or SKF payload
/// it is the last one, and its content stays encrypted here (see [`super::locate_encrypted`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// Header fields (Next Payload and Length are derived on emit).
    pub header: Header,
    /// Payloads in order.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parses a whole message: `bytes` is exactly one message (RFC 7296 §3.1: Length must
    /// equal its size), at most [`MAX_MESSAGE_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Message, Error> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLong);
        }
        let info = Header::parse(bytes)?;
        info.check(bytes.len())?;
        let payloads = collect(PayloadIter::new(bytes, HEADER_LEN, info.next_payload), true)?;
        Ok(Message {
            header: info.header,
            payloads,
        })
    }

    /// Appends the message to `out`, computing the header's Next Payload and Length and
    /// every payload's Next Payload and length fields. On error `out` is left as it was.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        let r = self.emit_inner(start, out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn emit_inner(&self, start: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let first = self
            .payloads
            .first()
            .map_or(PayloadType::NONE, Payload::kind);
        self.header.emit(first, 0, out);
        emit_payloads(&self.payloads, true, out)?;
        let len = out.len() - start;
        if len > MAX_MESSAGE_LEN {
            return Err(Error::TooLong);
        }
        let len = u32::try_from(len).map_err(|_| Error::TooLong)?;
        // RFC 7296 §3.1: Length is the last header field.
        let field = out
            .get_mut(start + HEADER_LEN - 4..start + HEADER_LEN)
            .ok_or(Error::Unrepresentable)?;
        field.copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// The bytes of this message in a new buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.emit(&mut out)?;
        Ok(out)
    }
}

/// Parses a bare payload chain whose first payload has type `first` and which fills `bytes`
/// exactly: the decrypted content of an SK payload (its Next Payload field is `first`), or the
/// reassembled content of SKF fragments. Padding and Pad Length must already be removed.
/// SK/SKF inside are refused (RFC 7296 §3.14: no nesting).
pub fn parse_chain(first: PayloadType, bytes: &[u8]) -> Result<Vec<Payload>, Error> {
    collect(PayloadIter::new(bytes, 0, first), false)
}

/// Appends a bare payload chain (no header) and returns the type of its first payload
/// (`NONE` if empty), which goes into the enclosing SK payload's Next Payload field.
/// SK/SKF are refused. On error `out` is left as it was.
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) -> Result<PayloadType, Error> {
    let start = out.len();
    match emit_payloads(payloads, false, out) {
        Ok(()) => Ok(payloads.first().map_or(PayloadType::NONE, Payload::kind)),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn collect(iter: PayloadIter<'_>, outer: bool) -> Result<Vec<Payload>, Error> {
    let mut payloads = Vec::new();
    for raw in iter {
        let raw = raw?;
        if !outer && raw.kind.is_encrypted() {
            return Err(Error::MisplacedEncrypted);
        }
        payloads.push(Payload::parse(&raw)?);
    }
    Ok(payloads)
}

fn emit_payloads(payloads: &[Payload], outer: bool, out: &mut Vec<u8>) -> Result<(), Error> {
    if payloads.len() > MAX_PAYLOADS {
        return Err(Error::TooMany(Part::Payload));
    }
    let mut kinds = payloads.iter().map(Payload::kind).skip(1);
    for (i, p) in payloads.iter().enumerate() {
        let next = kinds.next().unwrap_or(PayloadType::NONE);
        // RFC 7296 §3.14: SK is last and never nested; RFC 7383 §2.5 likewise for SKF.
        if p.kind().is_encrypted() && (!outer || i + 1 != payloads.len()) {
            return Err(Error::MisplacedEncrypted);
        }
        p.emit(next, out)?;
    }
    Ok(())
}
