//! A packet in the middle of a caller-owned buffer, with room on both sides.
//!
//! ESP grows a packet at both ends: the header and IV go in front, the
//! padding, trailer and ICV behind. The caller reserves that room up front
//! ([`crate::Sa::overhead`] says how much) and the engine works in place, so
//! the data path never allocates or copies a payload.

use crate::DropReason;

/// A window `[start, end)` onto a mutable buffer: headroom before it,
/// tailroom after it.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> PacketBuf<'a> {
    /// Wraps `buf`, with the packet at `buf[start..end]`.
    ///
    /// # Panics
    /// If `start > end` or `end > buf.len()`: the caller's bounds are wrong.
    pub fn new(buf: &'a mut [u8], start: usize, end: usize) -> Self {
        assert!(
            start <= end && end <= buf.len(),
            "packet window out of bounds"
        );
        Self { buf, start, end }
    }

    /// Wraps a buffer whose whole length is the packet (no room around it).
    pub fn whole(buf: &'a mut [u8]) -> Self {
        let end = buf.len();
        Self { buf, start: 0, end }
    }

    /// The packet bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The packet bytes, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// The packet length.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Where the packet starts in the underlying buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Where the packet ends in the underlying buffer.
    pub fn end(&self) -> usize {
        self.end
    }

    /// Free bytes before the packet.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Free bytes after the packet.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Grows the packet by `n` bytes at the front.
    pub fn push_front(&mut self, n: usize) -> Result<(), DropReason> {
        if n > self.start {
            return Err(DropReason::NoRoom);
        }
        self.start -= n;
        Ok(())
    }

    /// Grows the packet by `n` bytes at the back.
    pub fn push_back(&mut self, n: usize) -> Result<(), DropReason> {
        if n > self.tailroom() {
            return Err(DropReason::NoRoom);
        }
        self.end += n;
        Ok(())
    }

    /// Removes `n` bytes from the front.
    pub fn pull_front(&mut self, n: usize) -> Result<(), DropReason> {
        if n > self.len() {
            return Err(DropReason::Malformed);
        }
        self.start += n;
        Ok(())
    }

    /// Removes `n` bytes from the back.
    pub fn trim_back(&mut self, n: usize) -> Result<(), DropReason> {
        if n > self.len() {
            return Err(DropReason::Malformed);
        }
        self.end -= n;
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn push_and_pull() {
        let mut bytes = [0u8; 16];
        let mut p = PacketBuf::new(&mut bytes, 4, 8);
        assert_eq!((p.headroom(), p.len(), p.tailroom()), (4, 4, 8));
        p.push_front(4).unwrap();
        assert_eq!(p.push_front(1), Err(DropReason::NoRoom));
        p.push_back(8).unwrap();
        assert_eq!(p.push_back(1), Err(DropReason::NoRoom));
        assert_eq!(p.len(), 16);
        p.pull_front(10).unwrap();
        p.trim_back(6).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.trim_back(1), Err(DropReason::Malformed));
    }
}
