//! Property tests of the wire protocol: every frame round-trips through the codec, arbitrary bytes
//! never make the decoder panic, headers are checked before allocation, and version negotiation is
//! symmetric.
//!
//! Collections are kept small (at most 64 elements, 256 bytes) so the whole file runs in about a
//! second in debug builds.

// Every item here is test code, strategies included: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use klf_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union, ValueTree};
use proptest::test_runner::TestRunner;

/// 256 cases per property by default; `PROPTEST_CASES=10000 cargo test -p klf-proto` runs more.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

// ---------------------------------------------------------------------------------------------------
// Strategies: one per body struct, then one per frame kind.
// ---------------------------------------------------------------------------------------------------

/// Short strings of arbitrary (including multi-byte) characters.
fn string() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..16).prop_map(|chars| chars.into_iter().collect())
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    vec(string(), 0..8)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..256)
}

fn hash() -> impl Strategy<Value = [u8; 32]> {
    prop::array::uniform32(any::<u8>())
}

fn protocol_version() -> impl Strategy<Value = ProtocolVersion> {
    (any::<u16>(), any::<u16>()).prop_map(|(major, minor)| ProtocolVersion { major, minor })
}

/// Error codes as a receiver can see them: every `u16` read from the wire. (`ErrorCode::Other(n)`
/// with a known `n`, such as `Other(1)`, is a non-canonical value that decodes as the named code.)
fn error_code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode::from_u16)
}

fn hello() -> impl Strategy<Value = Hello> {
    (vec(protocol_version(), 0..8), string(), string(), strings()).prop_map(
        |(protocol_versions, node_id, mesh_id, features)| Hello {
            protocol_versions,
            node_id,
            mesh_id,
            features,
        },
    )
}

fn hello_ack() -> impl Strategy<Value = HelloAck> {
    (protocol_version(), string(), strings()).prop_map(|(version, node_id, features)| HelloAck {
        version,
        node_id,
        features,
    })
}

fn error_frame() -> impl Strategy<Value = ErrorFrame> {
    (error_code(), string()).prop_map(|(code, message)| ErrorFrame { code, message })
}

fn ping() -> impl Strategy<Value = Ping> {
    bytes().prop_map(|payload| Ping { payload })
}

fn pong() -> impl Strategy<Value = Pong> {
    bytes().prop_map(|payload| Pong { payload })
}

/// `Ack` has no fields (yet): its body is empty on the wire.
fn ack() -> impl Strategy<Value = Ack> {
    Just(Ack {})
}

fn membership_sync() -> impl Strategy<Value = MembershipSync> {
    bytes().prop_map(|data| MembershipSync { data })
}

fn gossip() -> impl Strategy<Value = Gossip> {
    bytes().prop_map(|data| Gossip { data })
}

fn leave_notice() -> impl Strategy<Value = LeaveNotice> {
    (string(), any::<u64>()).prop_map(|(node_id, generation)| LeaveNotice {
        node_id,
        generation,
    })
}

fn digest_entry() -> impl Strategy<Value = DigestEntry> {
    (string(), hash()).prop_map(|(key, hash)| DigestEntry { key, hash })
}

fn catalog_digest() -> impl Strategy<Value = CatalogDigest> {
    vec(digest_entry(), 0..64).prop_map(|entries| CatalogDigest { entries })
}

fn catalog_pull() -> impl Strategy<Value = CatalogPull> {
    vec(string(), 0..64).prop_map(|keys| CatalogPull { keys })
}

fn catalog_push() -> impl Strategy<Value = CatalogPush> {
    vec(vec(any::<u8>(), 0..32), 0..16).prop_map(|records| CatalogPush { records })
}

fn artifact_fetch() -> impl Strategy<Value = ArtifactFetch> {
    hash().prop_map(|hash| ArtifactFetch { hash })
}

fn artifact() -> impl Strategy<Value = Artifact> {
    (hash(), bytes()).prop_map(|(hash, bytes)| Artifact { hash, bytes })
}

fn trace_context() -> impl Strategy<Value = TraceContext> {
    (string(), string()).prop_map(|(traceparent, tracestate)| TraceContext {
        traceparent,
        tracestate,
    })
}

fn invoke() -> impl Strategy<Value = Invoke> {
    (
        (string(), string(), bytes(), any::<u64>()),
        (
            proptest::option::of(string()),
            string(),
            any::<u16>(),
            trace_context(),
        ),
    )
        .prop_map(
            |(
                (function, version_range, input, deadline_unix_ms),
                (idempotency_key, caller_principal, call_depth, trace),
            )| Invoke {
                function,
                version_range,
                input,
                deadline_unix_ms,
                idempotency_key,
                caller_principal,
                call_depth,
                trace,
            },
        )
}

fn invoke_failure() -> impl Strategy<Value = InvokeFailure> {
    (string(), string()).prop_map(|(kind, message)| InvokeFailure { kind, message })
}

fn invoke_reply() -> impl Strategy<Value = InvokeReply> {
    let outcome = prop_oneof![bytes().prop_map(Ok), invoke_failure().prop_map(Err)];
    (outcome, string()).prop_map(|(outcome, served_by_version)| InvokeReply {
        outcome,
        served_by_version,
    })
}

fn deploy_notice() -> impl Strategy<Value = DeployNotice> {
    (string(), string(), any::<u32>()).prop_map(|(name, version, replicas)| DeployNotice {
        name,
        version,
        replicas,
    })
}

fn undeploy_notice() -> impl Strategy<Value = UndeployNotice> {
    (string(), proptest::option::of(string()))
        .prop_map(|(name, version)| UndeployNotice { name, version })
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    (string(), string(), string(), string(), bytes()).prop_map(
        |(run_id, from_agent, to_agent, kind, body)| AgentMessage {
            run_id,
            from_agent,
            to_agent,
            kind,
            body,
        },
    )
}

fn join_request() -> impl Strategy<Value = JoinRequest> {
    (
        prop::array::uniform16(any::<u8>()),
        hash(),
        bytes(),
        string(),
        string(),
        string(),
    )
        .prop_map(
            |(token_id, secret, csr_der, name, advertise, api)| JoinRequest {
                token_id,
                secret,
                csr_der,
                name,
                advertise,
                api,
            },
        )
}

fn seed_peer() -> impl Strategy<Value = SeedPeer> {
    (string(), string(), string(), string(), any::<u64>()).prop_map(
        |(node_id, name, addr, api, generation)| SeedPeer {
            node_id,
            name,
            addr,
            api,
            generation,
        },
    )
}

fn join_accept() -> impl Strategy<Value = JoinAccept> {
    (
        string(),
        bytes(),
        bytes(),
        string(),
        string(),
        vec(seed_peer(), 0..8),
    )
        .prop_map(
            |(node_id, cert_der, ca_der, mesh_id, mesh_name, seeds)| JoinAccept {
                node_id,
                cert_der,
                ca_der,
                mesh_id,
                mesh_name,
                seeds,
            },
        )
}

/// One strategy per frame kind, with the kind it must produce.
fn frame_strategies() -> Vec<(u16, BoxedStrategy<Frame>)> {
    vec![
        (1, hello().prop_map(Frame::Hello).boxed()),
        (2, hello_ack().prop_map(Frame::HelloAck).boxed()),
        (3, error_frame().prop_map(Frame::Error).boxed()),
        (4, ping().prop_map(Frame::Ping).boxed()),
        (5, pong().prop_map(Frame::Pong).boxed()),
        (6, ack().prop_map(Frame::Ack).boxed()),
        (10, gossip().prop_map(Frame::Gossip).boxed()),
        (11, leave_notice().prop_map(Frame::Leave).boxed()),
        (
            12,
            membership_sync().prop_map(Frame::MembershipSync).boxed(),
        ),
        (20, catalog_digest().prop_map(Frame::CatalogDigest).boxed()),
        (21, catalog_pull().prop_map(Frame::CatalogPull).boxed()),
        (22, catalog_push().prop_map(Frame::CatalogPush).boxed()),
        (23, artifact_fetch().prop_map(Frame::ArtifactFetch).boxed()),
        (24, artifact().prop_map(Frame::Artifact).boxed()),
        (25, deploy_notice().prop_map(Frame::Deploy).boxed()),
        (26, undeploy_notice().prop_map(Frame::Undeploy).boxed()),
        (30, invoke().prop_map(Frame::Invoke).boxed()),
        (31, invoke_reply().prop_map(Frame::InvokeReply).boxed()),
        (40, agent_message().prop_map(Frame::Agent).boxed()),
        (50, join_request().prop_map(Frame::JoinRequest).boxed()),
        (51, join_accept().prop_map(Frame::JoinAccept).boxed()),
    ]
}

/// Any frame of any kind, each kind equally likely.
fn frame() -> impl Strategy<Value = Frame> {
    Union::new(frame_strategies().into_iter().map(|(_, s)| s))
}

/// Fails to compile when a variant is added to `Frame` without a strategy above: keep the two in
/// step (`every_kind_has_a_strategy` then checks the numbers).
fn variant_is_generated(frame: &Frame) -> bool {
    match frame {
        Frame::Hello(_)
        | Frame::HelloAck(_)
        | Frame::Error(_)
        | Frame::Ping(_)
        | Frame::Pong(_)
        | Frame::Ack(_)
        | Frame::Gossip(_)
        | Frame::Leave(_)
        | Frame::MembershipSync(_)
        | Frame::CatalogDigest(_)
        | Frame::CatalogPull(_)
        | Frame::CatalogPush(_)
        | Frame::ArtifactFetch(_)
        | Frame::Artifact(_)
        | Frame::Deploy(_)
        | Frame::Undeploy(_)
        | Frame::Invoke(_)
        | Frame::InvokeReply(_)
        | Frame::Agent(_)
        | Frame::JoinRequest(_)
        | Frame::JoinAccept(_) => true,
    }
}

/// A header of a random known kind (length usually consistent with the body, sometimes not)
/// followed by random bytes, so the body decoders, not just the header check, see garbage.
fn known_kind_then_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(Frame::KINDS),
        vec(any::<u8>(), 0..512),
        prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)],
    )
        .prop_map(|(kind, body, len_override)| {
            let len = len_override.unwrap_or(2 + body.len() as u32);
            let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&kind.to_be_bytes());
            buf.extend_from_slice(&body);
            buf
        })
}

/// A valid encoding of a frame with a few of its body bytes overwritten (the length prefix and
/// kind are kept), so the decoders see nearly valid bodies: lengths, enum tags and UTF-8 that are
/// just off.
fn corrupted_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        frame(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    )
        .prop_map(|(frame, edits)| {
            let mut buf = encode(&frame, &Limits::default()).expect("a small frame encodes");
            let body_len = buf.len() - HEADER_LEN;
            if body_len > 0 {
                for (at, byte) in edits {
                    buf[HEADER_LEN + at.index(body_len)] = byte;
                }
            }
            buf
        })
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        any::<u32>().prop_map(|max_frame_len| Limits { max_frame_len }),
        (0u32..64).prop_map(|max_frame_len| Limits { max_frame_len }),
    ]
}

/// Checks what `decode` promises for any input: no panic (the caller of this function would
/// fail), the consumed length fits the input, and a decoded frame is exactly what its bytes say.
fn check_decode_of_arbitrary_bytes(buf: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    match decode(buf, limits) {
        Ok((frame, used)) => {
            prop_assert!(used <= buf.len(), "used {used} of {} bytes", buf.len());
            prop_assert!(used >= HEADER_LEN);
            prop_assert_eq!(
                u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
                used - 4
            );
            prop_assert_eq!(u16::from_be_bytes([buf[4], buf[5]]), frame.kind());
            prop_assert!(Frame::KINDS.contains(&frame.kind()));
            // What decoded re-encodes to a frame that decodes to the same value (the bytes may
            // differ only by trailing bytes the decoder ignored).
            let again = encode(&frame, limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                again.len() <= used,
                "re-encoding grew: {} > {used}",
                again.len()
            );
            prop_assert_eq!(decode(&again, limits), Ok((frame, again.len())));
        }
        Err(ProtoError::Truncated { needed, have }) => {
            prop_assert_eq!(have, buf.len());
            prop_assert!(needed > have);
        }
        Err(ProtoError::FrameTooLarge { len, max }) => {
            prop_assert_eq!(max, limits.effective_max());
            prop_assert!(len > u64::from(max));
        }
        Err(ProtoError::UnknownFrameKind { kind }) => {
            prop_assert!(Frame::name_of_kind(kind).is_none());
        }
        Err(ProtoError::Malformed { kind, .. }) => {
            let wire_kind = u16::from_be_bytes([buf[4], buf[5]]);
            prop_assert_eq!(Frame::name_of_kind(wire_kind), Some(kind));
        }
        Err(ProtoError::FrameTooShort { len }) => prop_assert!(len < 2),
        Err(e @ (ProtoError::Encode { .. } | ProtoError::Incompatible { .. })) => {
            prop_assert!(false, "decode returned a non-decode error: {e}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Every frame decodes back to itself and uses exactly the bytes it was encoded to.
    #[test]
    fn any_frame_round_trips(f in frame()) {
        let limits = Limits::default();
        let bytes = encode(&f, &limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(bytes.len() >= HEADER_LEN);
        prop_assert_eq!(&bytes[..4], &((bytes.len() - 4) as u32).to_be_bytes()[..]);
        prop_assert_eq!(&bytes[4..6], &f.kind().to_be_bytes()[..]);
        prop_assert_eq!(decode(&bytes, &limits), Ok((f.clone(), bytes.len())));
        // The two-step path a stream reader takes gives the same frame.
        let header = parse_header(
            *bytes.first_chunk::<HEADER_LEN>().expect("at least a header"),
            &limits,
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(header.body_len(), bytes.len() - HEADER_LEN);
        prop_assert_eq!(decode_body(header, &bytes[HEADER_LEN..]), Ok(f));
    }

    /// `encode_into` appends after whatever the buffer holds and produces the same bytes as
    /// `encode`; a limit below the frame's size refuses it and leaves the buffer untouched.
    #[test]
    fn encode_into_appends_and_respects_the_limit(
        f in frame(),
        prefix in vec(any::<u8>(), 0..16),
        max_frame_len in 0u32..128,
    ) {
        let alone = encode(&f, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut buf = prefix.clone();
        encode_into(&f, &Limits::default(), &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&buf[prefix.len()..], &alone[..]);

        let small = Limits { max_frame_len };
        let mut buf = prefix.clone();
        let frame_len = alone.len() - 4;
        match encode_into(&f, &small, &mut buf) {
            Ok(()) => {
                prop_assert!(frame_len <= max_frame_len as usize);
                prop_assert_eq!(&buf[prefix.len()..], &alone[..]);
                prop_assert_eq!(decode(&alone, &small), Ok((f, alone.len())));
            }
            Err(e) => {
                prop_assert!(frame_len > max_frame_len as usize);
                prop_assert!(matches!(e, ProtoError::FrameTooLarge { .. }), "{}", e);
                prop_assert_eq!(buf, prefix);
                // And the receiver with the same limit refuses it on the header alone.
                let refused = matches!(decode(&alone, &small), Err(ProtoError::FrameTooLarge { .. }));
                prop_assert!(refused);
            }
        }
    }

    /// Bytes appended to a body by a newer sender (inside the frame's length) are ignored.
    #[test]
    fn trailing_bytes_inside_a_frame_are_ignored(f in frame(), extra in vec(any::<u8>(), 1..32)) {
        let limits = Limits::default();
        let mut bytes = encode(&f, &limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
        bytes.extend_from_slice(&extra);
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        prop_assert_eq!(decode(&bytes, &limits), Ok((f, bytes.len())));
    }

    /// A frame cut anywhere before its end is reported as truncated, never decoded or panicked on.
    #[test]
    fn every_strict_prefix_is_truncated(f in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&f, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let cut = cut.index(bytes.len());
        let result = decode(&bytes[..cut], &Limits::default());
        let truncated = matches!(result, Err(ProtoError::Truncated { have, .. }) if have == cut);
        prop_assert!(truncated, "prefix of {} of {} bytes gave {:?}", cut, bytes.len(), result);
    }

    /// Arbitrary bytes: `decode` answers Ok or a typed error, never panics.
    #[test]
    fn decode_of_arbitrary_bytes_never_panics(buf in vec(any::<u8>(), 0..2048), limits in limits()) {
        check_decode_of_arbitrary_bytes(&buf, &limits)?;
    }

    /// A valid header of a known kind followed by garbage: the body decoders answer, never panic.
    #[test]
    fn decode_of_garbage_bodies_never_panics(buf in known_kind_then_garbage()) {
        check_decode_of_arbitrary_bytes(&buf, &Limits::default())?;
    }

    /// A valid frame with a few body bytes changed: the body decoders answer, never panic.
    #[test]
    fn decode_of_corrupted_frames_never_panics(buf in corrupted_frame()) {
        check_decode_of_arbitrary_bytes(&buf, &Limits::default())?;
    }

    /// `decode_body` with any header, even one `parse_header` would refuse, never panics.
    #[test]
    fn decode_body_with_any_header_never_panics(
        len in prop_oneof![0u32..4, any::<u32>()],
        kind in prop_oneof![prop::sample::select(Frame::KINDS), any::<u16>()],
        body in vec(any::<u8>(), 0..64),
    ) {
        let header = FrameHeader { len, kind };
        match decode_body(header, &body) {
            Ok(frame) => {
                prop_assert_eq!(frame.kind(), kind);
                prop_assert_eq!(len as usize, body.len() + 2);
            }
            Err(ProtoError::FrameTooShort { len: short }) => {
                prop_assert_eq!(short, len);
                prop_assert!(len < 2);
            }
            Err(ProtoError::Truncated { needed, have }) => {
                prop_assert_eq!(have, body.len());
                prop_assert_eq!(needed, len as usize - 2);
            }
            Err(ProtoError::UnknownFrameKind { kind: unknown }) => {
                prop_assert_eq!(unknown, kind);
                prop_assert!(Frame::name_of_kind(kind).is_none());
            }
            Err(ProtoError::Malformed { kind: name, .. }) => {
                prop_assert_eq!(Frame::name_of_kind(kind), Some(name));
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    /// Any 6 bytes: `parse_header` never panics, refuses a length over the limit with
    /// `FrameTooLarge` (before anything is allocated), a length under 2 with `FrameTooShort`, and
    /// otherwise reports exactly the length and kind on the wire.
    #[test]
    fn parse_header_checks_the_length(header in any::<[u8; HEADER_LEN]>(), limits in limits()) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = u16::from_be_bytes([header[4], header[5]]);
        match parse_header(header, &limits) {
            Ok(parsed) => {
                prop_assert!(len <= limits.effective_max());
                prop_assert!(len >= 2);
                prop_assert_eq!(parsed, FrameHeader { len, kind });
                prop_assert_eq!(parsed.body_len(), len as usize - 2);
            }
            Err(ProtoError::FrameTooLarge { len: too_large, max }) => {
                prop_assert!(len > limits.effective_max());
                prop_assert_eq!(too_large, u64::from(len));
                prop_assert_eq!(max, limits.effective_max());
            }
            Err(ProtoError::FrameTooShort { len: short }) => {
                prop_assert!(len < 2 && len <= limits.effective_max());
                prop_assert_eq!(short, len);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    /// Several frames written back to back into one buffer come out one by one, in order.
    #[test]
    fn concatenated_frames_decode_one_by_one(frames in vec(frame(), 0..8)) {
        let limits = Limits::default();
        let mut buf = Vec::new();
        for f in &frames {
            encode_into(f, &limits, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let mut rest = &buf[..];
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            let (f, used) = decode(rest, &limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(used > 0 && used <= rest.len());
            decoded.push(f);
            rest = &rest[used..];
        }
        prop_assert_eq!(decoded, frames);
    }

    /// Error codes keep their number on the wire, whatever it is.
    #[test]
    fn error_codes_keep_their_number(n in any::<u16>()) {
        let code = ErrorCode::from_u16(n);
        prop_assert_eq!(code.to_u16(), n);
        prop_assert_eq!(ErrorCode::from_u16(code.to_u16()), code);
    }

    /// Negotiation: both sides choose the same version, it is the highest major both speak at the
    /// lower of the two sides' best minor for it, and it fails exactly when no major is shared.
    #[test]
    fn negotiation_is_symmetric(
        ours in vec((0u16..5, 0u16..5), 0..6),
        theirs in vec((0u16..5, 0u16..5), 0..6),
    ) {
        let to_versions = |v: Vec<(u16, u16)>| -> Vec<ProtocolVersion> {
            v.into_iter().map(|(major, minor)| ProtocolVersion { major, minor }).collect()
        };
        let (ours, theirs) = (to_versions(ours), to_versions(theirs));
        let ab = negotiate(&ours, &theirs);
        let ba = negotiate(&theirs, &ours);

        let majors = |vs: &[ProtocolVersion]| vs.iter().map(|v| v.major).collect::<BTreeSet<_>>();
        let common = majors(&ours).intersection(&majors(&theirs)).copied().max();
        let best_minor = |vs: &[ProtocolVersion], major: u16| {
            vs.iter().filter(|v| v.major == major).map(|v| v.minor).max()
        };

        match (ab, ba) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a, b);
                prop_assert!(ours.iter().any(|v| v.major == a.major));
                prop_assert!(theirs.iter().any(|v| v.major == a.major));
                prop_assert_eq!(Some(a.major), common);
                prop_assert_eq!(
                    Some(a.minor),
                    best_minor(&ours, a.major).min(best_minor(&theirs, a.major))
                );
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(common, None);
                let typed = matches!(a, ProtoError::Incompatible { .. })
                    && matches!(b, ProtoError::Incompatible { .. });
                prop_assert!(typed);
            }
            (ab, ba) => prop_assert!(false, "asymmetric: {:?} vs {:?}", ab, ba),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Plain tests.
// ---------------------------------------------------------------------------------------------------

#[test]
fn every_kind_has_a_unique_name() {
    let mut kinds = BTreeSet::new();
    let mut names = BTreeSet::new();
    for &kind in Frame::KINDS {
        assert!(kinds.insert(kind), "kind {kind} listed twice");
        let name = Frame::name_of_kind(kind).unwrap_or_else(|| panic!("kind {kind} has no name"));
        assert!(!name.is_empty());
        assert!(names.insert(name), "name {name} used by two kinds");
    }
    assert!(!kinds.is_empty());
    // Numbers not in the list have no name, so they decode as UnknownFrameKind.
    for kind in 0..=u16::MAX {
        assert_eq!(
            Frame::name_of_kind(kind).is_some(),
            kinds.contains(&kind),
            "kind {kind}"
        );
    }
}

/// The strategies cover every kind, each producing frames of its own kind with the matching name.
#[test]
fn every_kind_has_a_strategy() {
    let mut runner = TestRunner::deterministic();
    let mut covered = BTreeSet::new();
    for (kind, strategy) in frame_strategies() {
        for _ in 0..8 {
            let f = strategy
                .new_tree(&mut runner)
                .expect("strategy generates")
                .current();
            assert!(variant_is_generated(&f));
            assert_eq!(f.kind(), kind);
            assert_eq!(Frame::name_of_kind(kind), Some(f.kind_name()));
        }
        assert!(covered.insert(kind), "two strategies for kind {kind}");
    }
    let all: BTreeSet<u16> = Frame::KINDS.iter().copied().collect();
    assert_eq!(covered, all);
}

#[test]
fn a_stream_of_every_kind_decodes_frame_by_frame() {
    let mut runner = TestRunner::deterministic();
    let frames: Vec<Frame> = frame_strategies()
        .into_iter()
        .map(|(_, s)| {
            s.new_tree(&mut runner)
                .expect("strategy generates")
                .current()
        })
        .collect();
    let limits = Limits::default();
    let mut buf = Vec::new();
    for f in &frames {
        encode_into(f, &limits, &mut buf).expect("encodes");
    }
    let mut offset = 0;
    for expected in &frames {
        let (f, used) = decode(&buf[offset..], &limits).expect("decodes");
        assert_eq!(&f, expected);
        offset += used;
    }
    assert_eq!(offset, buf.len());
    // A stream cut inside its last frame: every complete frame decodes, the rest is truncated.
    let cut = &buf[..buf.len() - 1];
    let mut offset = 0;
    for expected in &frames[..frames.len() - 1] {
        let (f, used) = decode(&cut[offset..], &limits).expect("decodes");
        assert_eq!(&f, expected);
        offset += used;
    }
    assert!(matches!(
        decode(&cut[offset..], &limits),
        Err(ProtoError::Truncated { .. })
    ));
}

#[test]
fn documented_ping_example() {
    let bytes = encode(
        &Frame::Ping(Ping {
            payload: vec![7; 3],
        }),
        &Limits::default(),
    )
    .expect("encodes");
    assert_eq!(
        bytes,
        [0x00, 0x00, 0x00, 0x06, 0x00, 0x04, 0x03, 0x07, 0x07, 0x07]
    );
}

/// Regression found by `decode_body_with_any_header_never_panics`: a hand-built header whose
/// length cannot even hold the kind made `FrameHeader::body_len` underflow (a panic in debug
/// builds). It is now the same typed error `parse_header` gives.
#[test]
fn decode_body_refuses_a_header_too_short_for_a_kind() {
    for len in 0..2 {
        let header = FrameHeader { len, kind: 4 };
        assert_eq!(header.body_len(), 0);
        assert_eq!(
            decode_body(header, &[]),
            Err(ProtoError::FrameTooShort { len })
        );
    }
}

/// A frame of a few bytes whose body claims a huge collection: a `u64` varint length (tag `fd`).
/// (Tag `ff` is a reserved varint tag, refused before any length is read.)
fn frame_claiming(kind: u16, claimed: u64) -> Vec<u8> {
    let mut body = vec![0xfd];
    body.extend_from_slice(&claimed.to_le_bytes());
    let mut buf = Vec::new();
    buf.extend_from_slice(&(2 + body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&kind.to_be_bytes());
    buf.extend_from_slice(&body);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Any claimed length for a string (`Leave.node_id`, bincode's own decoder, charged against its
    /// byte limit) or a byte vector (`Ping.payload`, serde's sequence decoder, pre-allocating at most
    /// 1 MiB) in a 15-byte frame is refused as malformed, without panicking or allocating the claim.
    #[test]
    fn huge_claimed_lengths_are_malformed(
        claimed in prop_oneof![Just(u64::MAX), 1u64 << 24.., 9u64..1 << 24],
        kind in prop::sample::select(vec![4u16, 11]),
    ) {
        let buf = frame_claiming(kind, claimed);
        prop_assert_eq!(buf.len(), 15);
        let result = decode(&buf, &Limits::default());
        let malformed = matches!(
            result,
            Err(ProtoError::Malformed { kind: name, .. }) if Some(name) == Frame::name_of_kind(kind)
        );
        prop_assert!(malformed, "claim of {} gave {:?}", claimed, result);
    }
}

#[test]
fn a_string_claim_over_the_limit_is_refused_by_the_byte_limit() {
    let err = decode(&frame_claiming(11, u64::MAX), &Limits::default()).expect_err("refused");
    match err {
        ProtoError::Malformed { kind, reason } => {
            assert_eq!(kind, "Leave");
            assert!(reason.contains("LimitExceeded"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
}
