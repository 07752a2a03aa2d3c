//! Protocol version negotiation (the `Hello` / `HelloAck` exchange).
//!
//! Nodes interoperate within a major version: the higher major both sides speak wins, and within it
//! the lower of the two minors, so a newer node talks down to an older one during a rolling upgrade.

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;

/// A protocol version: the major changes incompatibly, the minor only adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The versions this build speaks, newest first.
pub const SUPPORTED_VERSIONS: &[ProtocolVersion] = &[ProtocolVersion { major: 1, minor: 0 }];

/// Chooses the version two peers will speak: the highest major both know, at the lower of their
/// minors for that major.
pub fn negotiate(
    ours: &[ProtocolVersion],
    theirs: &[ProtocolVersion],
) -> Result<ProtocolVersion, ProtoError> {
    ours.iter()
        .filter_map(|o| {
            theirs
                .iter()
                .filter(|t| t.major == o.major)
                .map(|t| t.minor.min(o.minor))
                .max()
                .map(|minor| ProtocolVersion {
                    major: o.major,
                    minor,
                })
        })
        .max()
        .ok_or_else(|| ProtoError::Incompatible {
            ours: ours.to_vec(),
            theirs: theirs.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn v(major: u16, minor: u16) -> ProtocolVersion {
        ProtocolVersion { major, minor }
    }

    #[test]
    fn picks_highest_common_major_at_lower_minor() {
        assert_eq!(negotiate(&[v(1, 3), v(2, 0)], &[v(1, 1)]), Ok(v(1, 1)));
        assert_eq!(negotiate(&[v(1, 0)], &[v(1, 4)]), Ok(v(1, 0)));
        assert_eq!(
            negotiate(&[v(1, 2), v(2, 1)], &[v(2, 5), v(1, 9)]),
            Ok(v(2, 1))
        );
    }

    #[test]
    fn disjoint_majors_are_incompatible() {
        let err = negotiate(&[v(1, 0)], &[v(2, 0)]).unwrap_err();
        assert!(matches!(err, ProtoError::Incompatible { .. }));
        assert!(err.to_string().contains("incompatible"));
        assert!(negotiate(&[v(1, 0)], &[]).is_err());
    }
}
