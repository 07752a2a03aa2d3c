//! Protocol limits, checked before any allocation that network input could size.

/// Limits applied by the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame (kind + body), in bytes. A length prefix above it is refused before
    /// a buffer is allocated.
    pub max_frame_len: u32,
}

impl Limits {
    /// 16 MiB: large enough for a function artifact, small enough that a hostile peer cannot make a
    /// node allocate much.
    pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: Self::DEFAULT_MAX_FRAME_LEN,
        }
    }
}
