//! The one place that turns frames into bytes and back.
//!
//! Layout of one frame on a stream or in a datagram (all integers big-endian):
//!
//! ```text
//! offset  size  field
//! 0       4     length L of what follows (kind + body), u32; checked against Limits before allocating
//! 4       2     frame kind, u16 (see Frame::kind)
//! 6       L-2   body: bincode 2 (standard config: little-endian, varint integers) of the kind's struct
//! ```
//!
//! bincode is the design card's choice; its 2.x line is final (3.0 is an empty release), so every use
//! goes through this module and the format can change in one place.

use crate::error::ProtoError;
use crate::frame::Frame;
use crate::limits::Limits;

/// Bytes before the body: the length prefix and the frame kind.
pub const HEADER_LEN: usize = 6;
const LEN_PREFIX: usize = 4;
const KIND_LEN: u32 = 2;

/// bincode's configuration for bodies. The byte limit makes bincode refuse a collection whose
/// claimed length exceeds the limit before it allocates for it.
pub(crate) fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ Limits::DEFAULT_MAX_FRAME_LEN as usize }>,
> {
    bincode::config::standard().with_limit::<{ Limits::DEFAULT_MAX_FRAME_LEN as usize }>()
}

/// What the first [`HEADER_LEN`] bytes of a frame say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of kind + body.
    pub len: u32,
    pub kind: u16,
}

impl FrameHeader {
    /// Bytes of body that follow the header (0 for a length too short to hold a kind, which
    /// [`parse_header`] refuses but a hand-built header can carry).
    pub fn body_len(&self) -> usize {
        self.len.saturating_sub(KIND_LEN) as usize
    }
}

/// Reads and checks a frame header: refuses a length over the limit or too short for a kind. This is
/// what a stream reader calls before it allocates the body.
pub fn parse_header(header: [u8; HEADER_LEN], limits: &Limits) -> Result<FrameHeader, ProtoError> {
    let [a, b, c, d, k0, k1] = header;
    let len = u32::from_be_bytes([a, b, c, d]);
    if len > limits.effective_max() {
        return Err(ProtoError::FrameTooLarge {
            len: u64::from(len),
            max: limits.effective_max(),
        });
    }
    if len < KIND_LEN {
        return Err(ProtoError::FrameTooShort { len });
    }
    Ok(FrameHeader {
        len,
        kind: u16::from_be_bytes([k0, k1]),
    })
}

/// Decodes a body whose header has been read. Unknown kinds give [`ProtoError::UnknownFrameKind`]
/// (the connection can go on); trailing bytes after a known body are ignored (appended fields).
pub fn decode_body(header: FrameHeader, body: &[u8]) -> Result<Frame, ProtoError> {
    if header.len < KIND_LEN {
        return Err(ProtoError::FrameTooShort { len: header.len });
    }
    if body.len() != header.body_len() {
        return Err(ProtoError::Truncated {
            needed: header.body_len(),
            have: body.len(),
        });
    }
    Frame::decode_body_of_kind(header.kind, body)
}

/// Appends one encoded frame to `out`.
pub fn encode_into(frame: &Frame, limits: &Limits, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.extend_from_slice(&frame.kind().to_be_bytes());
    let encoded = frame.encode_body(out);
    let len = out.len().saturating_sub(start.saturating_add(LEN_PREFIX));
    let result = match encoded {
        Err(e) => Err(ProtoError::Encode {
            kind: frame.kind_name(),
            reason: e.to_string(),
        }),
        Ok(()) => match u32::try_from(len) {
            Ok(len) if len <= limits.effective_max() => Ok(len),
            _ => Err(ProtoError::FrameTooLarge {
                len: u64::try_from(len).unwrap_or(u64::MAX),
                max: limits.effective_max(),
            }),
        },
    };
    let written = result.and_then(|len| {
        let prefix = out
            .get_mut(start..start.saturating_add(LEN_PREFIX))
            .ok_or_else(|| ProtoError::Encode {
                kind: frame.kind_name(),
                reason: "the length prefix is missing".into(),
            })?;
        prefix.copy_from_slice(&len.to_be_bytes());
        Ok(())
    });
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// Encodes one frame into a new buffer.
pub fn encode(frame: &Frame, limits: &Limits) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(64);
    encode_into(frame, limits, &mut out)?;
    Ok(out)
}

/// Encodes a value carried opaquely inside a frame body (for example a layer's own records), with
/// the same bincode configuration as frames, so the format stays in this module.
pub fn encode_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ProtoError> {
    bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| ProtoError::Encode {
        kind: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Decodes a value made by [`encode_value`]; never panics on any input.
pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    bincode::serde::decode_from_slice(bytes, bincode_config())
        .map(|(value, _)| value)
        .map_err(|e| ProtoError::Malformed {
            kind: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
}

/// Decodes the first frame of `buf`, returning it and the number of bytes it used.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<(Frame, usize), ProtoError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(ProtoError::Truncated {
            needed: HEADER_LEN,
            have: buf.len(),
        });
    };
    let header = parse_header(*header_bytes, limits)?;
    let total = HEADER_LEN.saturating_add(header.body_len());
    let Some(body) = buf.get(HEADER_LEN..total) else {
        return Err(ProtoError::Truncated {
            needed: total,
            have: buf.len(),
        });
    };
    Ok((decode_body(header, body)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::*;

    #[test]
    fn ping_layout_is_documented_layout() {
        let bytes = encode(
            &Frame::Ping(Ping {
                payload: vec![7; 3],
            }),
            &Limits::default(),
        )
        .unwrap();
        // length 2 (kind) + 1 (varint length 3) + 3 payload bytes = 6
        assert_eq!(bytes, [0, 0, 0, 6, 0, 4, 3, 7, 7, 7]);
        let (frame, used) = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            frame,
            Frame::Ping(Ping {
                payload: vec![7; 3]
            })
        );
    }

    #[test]
    fn huge_length_prefix_is_refused_before_allocation() {
        let err = decode(&[0xff, 0xff, 0xff, 0xff, 0, 4], &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                ProtoError::FrameTooLarge {
                    len: 0xffff_ffff,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_kind_is_typed() {
        let err = decode(&[0, 0, 0, 2, 0xab, 0xcd], &Limits::default()).unwrap_err();
        assert_eq!(err, ProtoError::UnknownFrameKind { kind: 0xabcd });
    }

    #[test]
    fn claimed_collection_larger_than_the_frame_is_malformed() {
        // A Ping whose payload claims u64::MAX bytes (varint tag 0xfd + 8 bytes) in an 11-byte frame.
        let mut bytes = vec![0, 0, 0, 11, 0, 4, 0xfd];
        bytes.extend_from_slice(&[0xff; 8]);
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, ProtoError::Malformed { kind: "Ping", .. }),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_from_a_newer_body_are_ignored() {
        let mut bytes =
            encode(&Frame::Ping(Ping { payload: vec![1] }), &Limits::default()).unwrap();
        bytes.extend_from_slice(&[9, 9]);
        bytes[3] += 2;
        let (frame, _) = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(frame, Frame::Ping(Ping { payload: vec![1] }));
    }

    #[test]
    fn oversized_frame_is_not_encoded() {
        let limits = Limits { max_frame_len: 16 };
        let mut out = vec![1, 2];
        let err = encode_into(
            &Frame::Ping(Ping {
                payload: vec![0; 64],
            }),
            &limits,
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }));
        assert_eq!(out, [1, 2], "a failed encode leaves the buffer as it was");
    }
}
