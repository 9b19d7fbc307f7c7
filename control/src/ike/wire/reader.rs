//! Bounds-checked cursor over input bytes, and length back-patching for emit.

use super::Error;

/// Reads big-endian fields; every read past the end is `Error::Truncated`, never a panic.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(Error::Truncated)?;
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let s = self.take(N)?;
        s.try_into().map_err(|_| Error::Truncated)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Everything left; the reader is then empty.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// A sub-structure whose 16-bit length field (counting its own 4-byte header) was just read:
    /// the `len - 4` bytes that follow. A length below `min` or beyond the input is `bad`.
    pub(crate) fn sub(&mut self, len: u16, min: usize, bad: Error) -> Result<&'a [u8], Error> {
        let len = usize::from(len);
        if len < min {
            return Err(bad);
        }
        let body = len.checked_sub(4).ok_or(bad)?;
        self.take(body).map_err(|_| bad)
    }
}

/// Writes the length of the structure that starts at `start` (everything emitted since) into
/// its 16-bit length field at `start + 2`. Payload, proposal, transform and selector headers all
/// keep their length there (RFC 7296 §3.2, §3.3.1, §3.3.2, §3.13.1).
pub(crate) fn patch_len16(out: &mut [u8], start: usize) -> Result<(), Error> {
    let len = out.len().checked_sub(start).ok_or(Error::TooLong)?;
    let len = u16::try_from(len).map_err(|_| Error::TooLong)?;
    let field = out
        .get_mut(start + 2..start + 4)
        .ok_or(Error::Unrepresentable)?;
    field.copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A count that must fit its wire field and stay within `max`.
pub(crate) fn count_u8(n: usize, max: usize, part: super::Part) -> Result<u8, Error> {
    if n > max {
        return Err(Error::TooMany(part));
    }
    u8::try_from(n).map_err(|_| Error::TooMany(part))
}
