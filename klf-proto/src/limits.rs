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

    /// 64 KiB: the largest request read on the `klf-join/1` ALPN, where the client is not yet
    /// authenticated. A real `JoinRequest` is under 2 KiB (48 bytes of token, a CSR of a few hundred
    /// bytes, a name of at most 63 bytes and two addresses), so the bound leaves room for fields a
    /// later minor version appends, while an anonymous client can make the node buffer at most
    /// 64 KiB instead of [`Limits::DEFAULT_MAX_FRAME_LEN`].
    pub const JOIN_MAX_FRAME_LEN: u32 = 64 * 1024;

    /// The limits of the `klf-join/1` ALPN (see [`Limits::JOIN_MAX_FRAME_LEN`]).
    pub const fn join() -> Self {
        Self {
            max_frame_len: Self::JOIN_MAX_FRAME_LEN,
        }
    }
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

    #[test]
    fn a_generous_join_request_fits_the_join_limit_many_times_over() {
        // An RSA-4096 CSR (the largest a client could reasonably send) is about 1.7 KiB; the name
        // and addresses are at their longest.
        let request = crate::Frame::JoinRequest(crate::JoinRequest {
            token_id: [1; 16],
            secret: [2; 32],
            csr_der: vec![3; 1800],
            name: "n".repeat(63),
            advertise: format!("{}:65535", "h".repeat(253)),
            api: format!("{}:65535", "h".repeat(253)),
        });
        let bytes = crate::encode(&request, &Limits::join()).unwrap();
        assert!(
            bytes.len() * 20 < Limits::JOIN_MAX_FRAME_LEN as usize,
            "{}",
            bytes.len()
        );
    }

    #[test]
    fn the_join_limit_refuses_a_larger_frame_from_its_header() {
        let len = Limits::JOIN_MAX_FRAME_LEN + 1;
        let [a, b, c, d] = len.to_be_bytes();
        let err = crate::parse_header([a, b, c, d, 0, 50], &Limits::join()).unwrap_err();
        assert_eq!(
            err,
            crate::ProtoError::FrameTooLarge {
                len: u64::from(len),
                max: Limits::JOIN_MAX_FRAME_LEN
            }
        );
    }
}
