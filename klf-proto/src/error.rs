//! Typed protocol errors, and the error codes carried by an [`crate::ErrorFrame`].

use crate::version::ProtocolVersion;

/// Everything that can go wrong while encoding, decoding or negotiating KLF frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The length prefix announces a frame larger than the limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    /// The length prefix announces a frame too short to hold a frame kind.
    #[error("frame of {len} bytes is too short to hold a frame kind (at least 2 bytes)")]
    FrameTooShort { len: u32 },
    /// The buffer ends before the frame does.
    #[error("truncated frame: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    /// A frame kind this node does not know (for example from a newer node).
    #[error("unknown frame kind {kind}")]
    UnknownFrameKind { kind: u16 },
    /// The frame kind is known but its body does not decode.
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
    /// A frame could not be encoded (only happens for frames over the size limit).
    #[error("cannot encode {kind} frame: {reason}")]
    Encode { kind: &'static str, reason: String },
    /// The two sides share no protocol major version.
    #[error("incompatible protocol versions: we speak {ours:?}, the peer speaks {theirs:?}")]
    Incompatible {
        ours: Vec<ProtocolVersion>,
        theirs: Vec<ProtocolVersion>,
    },
}

impl ProtoError {
    /// The wire error code that tells the peer about this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnknownFrameKind { .. } => ErrorCode::UnknownFrameKind,
            Self::Incompatible { .. } => ErrorCode::Incompatible,
            Self::FrameTooShort { .. }
            | Self::Truncated { .. }
            | Self::Malformed { .. }
            | Self::Encode { .. } => ErrorCode::Malformed,
        }
    }
}

/// Error codes carried on the wire in [`crate::ErrorFrame::code`].
///
/// Carried as a `u16` so that a code added by a newer node decodes as [`ErrorCode::Other`] on an older
/// one instead of failing the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No common protocol version.
    Incompatible,
    /// The frame kind is unknown to the receiver.
    UnknownFrameKind,
    /// The frame did not decode.
    Malformed,
    /// The frame exceeded the receiver's size limit.
    FrameTooLarge,
    /// The peer is not allowed to do this (wrong mesh, missing certificate, policy).
    Unauthorized,
    /// The frame is valid but this node has no handler for it (yet).
    Unsupported,
    /// A join token was refused (unknown, reused, expired or wrong secret).
    TokenRejected,
    /// The receiver failed while handling a valid frame.
    Internal,
    /// The receiver is shutting down or overloaded; try another node or later.
    Unavailable,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Incompatible => 1,
            Self::UnknownFrameKind => 2,
            Self::Malformed => 3,
            Self::FrameTooLarge => 4,
            Self::Unauthorized => 5,
            Self::Unsupported => 6,
            Self::TokenRejected => 7,
            Self::Internal => 8,
            Self::Unavailable => 9,
            Self::Other(n) => n,
        }
    }

    /// The code for a number read from the wire; unknown numbers are kept as [`ErrorCode::Other`].
    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => Self::Incompatible,
            2 => Self::UnknownFrameKind,
            3 => Self::Malformed,
            4 => Self::FrameTooLarge,
            5 => Self::Unauthorized,
            6 => Self::Unsupported,
            7 => Self::TokenRejected,
            8 => Self::Internal,
            9 => Self::Unavailable,
            n => Self::Other(n),
        }
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.to_u16())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(Self::from_u16)
    }
}
