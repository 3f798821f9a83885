//! The 4-byte frame header, read in place.

/// Length of the default frame header in bytes.
pub const HEADER_LEN: usize = 4;

/// The default frame header: `size` counts the whole frame, header included; `id` names the
/// packet type. Both little-endian on the wire.
///
/// ```text
///  0       2       4                size
///  +-------+-------+-----------------+
///  | size  |  id   | payload ...     |
///  +-------+-------+-----------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Whole frame length in bytes, header included.
    pub size: u16,
    /// Packet id.
    pub id: u16,
}

impl Header {
    /// Reads a header from the first four bytes of `buf`, or `None` if fewer are present.
    /// Never fails otherwise: validation of `size` is the decoder's job.
    #[inline]
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self {
            size: u16::from_le_bytes([h[0], h[1]]),
            id: u16::from_le_bytes([h[2], h[3]]),
        })
    }

    /// The header of a frame carrying `payload_len` bytes, or `None` if the frame would not fit
    /// the 16-bit size field.
    #[inline]
    pub fn for_payload(id: u16, payload_len: usize) -> Option<Self> {
        let size = u16::try_from(payload_len.checked_add(HEADER_LEN)?).ok()?;
        Some(Self { size, id })
    }

    /// The wire form.
    #[inline]
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let s = self.size.to_le_bytes();
        let i = self.id.to_le_bytes();
        [s[0], s[1], i[0], i[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_little_endian() {
        assert_eq!(
            Header::parse(&[0x10, 0x00, 0x02, 0x01, 0xff]),
            Some(Header {
                size: 16,
                id: 0x0102
            })
        );
        assert_eq!(Header::parse(&[1, 2, 3]), None);
    }

    #[test]
    fn payload_limit() {
        assert!(Header::for_payload(0, 65531).is_some());
        assert!(Header::for_payload(0, 65532).is_none());
    }
}
