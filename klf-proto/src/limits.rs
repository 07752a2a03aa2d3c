//! Protocol limits, checked before any allocation that network input could size.

/// Limits applied by the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame (kind + body), in bytes. A length prefix above it is refused before
    /// a buffer is allocated. It can only lower [`Limits::DEFAULT_MAX_FRAME_LEN`], which is also
    /// bincode's compile-time decoding limit: see [`Limits::effective_max`].
    pub max_frame_len: u32,
}

impl Limits {
    /// The limit actually enforced: `max_frame_len`, capped at the default, because bincode's
    /// decoding limit is a compile-time constant and a larger frame would encode but not decode.
    pub fn effective_max(&self) -> u32 {
        self.max_frame_len.min(Self::DEFAULT_MAX_FRAME_LEN)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_configured_limit_is_capped_at_what_bincode_can_decode() {
        let raised = Limits {
            max_frame_len: Limits::DEFAULT_MAX_FRAME_LEN * 2,
        };
        assert_eq!(raised.effective_max(), Limits::DEFAULT_MAX_FRAME_LEN);
        let lowered = Limits { max_frame_len: 100 };
        assert_eq!(lowered.effective_max(), 100);
    }
}
