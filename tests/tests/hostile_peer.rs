//! A member that misbehaves on the wire, a client without a certificate, a client with a foreign
//! certificate, and clients that abuse the join ALPN (stalling, oversized, flooding): each gets a
//! typed error, a closed stream or a closed connection, and the node keeps serving everyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use klf_actors::mesh::join::{JoinError, redeem};
use klf_actors::mesh::transport::{JOIN_RATE, JOIN_READ_DEADLINE};
use klf_actors::mesh::{MemberState, PeerAddr, TransportMsg};
use klf_actors::node::DataDir;
use klf_actors::security::{NodeCredentials, tls};
use klf_proto::{ErrorCode, Frame, Hello, Limits, Ping};
use klf_tests::InProcessMesh;
use quinn::crypto::rustls::QuicClientConfig;

fn endpoint_with(config: rustls::ClientConfig) -> quinn::Endpoint {
    let quic = QuicClientConfig::try_from(config).expect("quic client config");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

async fn connect(
    endpoint: &quinn::Endpoint,
    mesh: &InProcessMesh,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let addr = mesh.nodes[0].local_addr();
    endpoint
        .connect(addr, &tls::server_name().to_str())
        .expect("connect starts")
        .await
}

/// Sends raw bytes on a new stream; returns the decoded answer, or None if the stream was closed
/// without one.
async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Option<Frame> {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream opens");
    // The server may stop reading before we finish writing (that is the point of some cases).
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("the node answers or closes the stream in time")
        .ok()?;
    if answer.is_empty() {
        return None;
    }
    Some(
        klf_proto::decode(&answer, &Limits::default())
            .expect("the answer is a valid frame")
            .0,
    )
}

fn error_code(frame: Option<Frame>) -> Option<ErrorCode> {
    match frame {
        Some(Frame::Error(e)) => Some(e.code),
        _ => None,
    }
}

fn hello_of(creds: &NodeCredentials, mesh_id: &str) -> Vec<u8> {
    klf_proto::encode(
        &Frame::Hello(Hello {
            protocol_versions: klf_proto::SUPPORTED_VERSIONS.to_vec(),
            node_id: creds.node_id.clone(),
            mesh_id: mesh_id.to_string(),
            features: vec![],
        }),
        &Limits::default(),
    )
    .expect("encode")
}

/// Node1 pings node0 through its transport; panics unless node0 answers.
async fn members_ping(mesh: &InProcessMesh) {
    let to = PeerAddr {
        addr: mesh.nodes[0].identity().addr.clone(),
        node_id: Some(mesh.nodes[0].identity().node_id.clone()),
    };
    let answer = ractor::call!(mesh.nodes[1].transport(), |reply| TransportMsg::Request {
        to,
        frame: Frame::Ping(Ping { payload: vec![42] }),
        reply,
    })
    .expect("transport answers");
    assert!(
        matches!(answer, Ok(Frame::Pong(ref p)) if p.payload == [42]),
        "{answer:?}"
    );
}

async fn node_still_serves(mesh: &InProcessMesh) {
    members_ping(mesh).await;
    assert_eq!(mesh.state_of(1, "node0").await, Some(MemberState::Alive));
    assert_eq!(mesh.state_of(0, "node1").await, Some(MemberState::Alive));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_typed_errors_and_the_node_keeps_serving() {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    // A legitimate member's credentials, used by a hand-written misbehaving client.
    let creds = DataDir::new(mesh.dir.path().join("node1"))
        .load_credentials()
        .expect("creds");
    let mesh_id = mesh.nodes[0].settings().mesh_id.clone();
    let endpoint = endpoint_with(tls::mesh_client_config(&creds).expect("tls"));
    let conn = connect(&endpoint, &mesh).await.expect("a member connects");
    assert!(matches!(
        raw_request(&conn, &hello_of(&creds, &mesh_id)).await,
        Some(Frame::HelloAck(_))
    ));

    // A known kind whose body does not decode.
    let malformed = [0, 0, 0, 8, 0, 4, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        error_code(raw_request(&conn, &malformed).await),
        Some(ErrorCode::Malformed)
    );
    // Text instead of a frame: its first bytes read as a huge length.
    let text = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        error_code(raw_request(&conn, text).await),
        Some(ErrorCode::FrameTooLarge)
    );
    // A huge length prefix followed by a little data: refused before any allocation.
    let mut huge = vec![0xff, 0xff, 0xff, 0xf0, 0, 4];
    huge.extend_from_slice(&[0; 1024]);
    assert_eq!(
        error_code(raw_request(&conn, &huge).await),
        Some(ErrorCode::FrameTooLarge)
    );
    // An unknown frame kind of this version.
    let unknown = [0, 0, 0, 4, 0x7f, 0x7f, 1, 2];
    assert_eq!(
        error_code(raw_request(&conn, &unknown).await),
        Some(ErrorCode::UnknownFrameKind)
    );
    // A second Hello.
    assert_eq!(
        error_code(raw_request(&conn, &hello_of(&creds, &mesh_id)).await),
        Some(ErrorCode::Malformed)
    );
    // A membership sync whose state does not decode is ignored; the node still answers with its own.
    let junk_sync = klf_proto::encode(
        &Frame::MembershipSync(klf_proto::MembershipSync {
            data: vec![0xff; 64],
        }),
        &Limits::default(),
    )
    .expect("encode");
    assert!(matches!(
        raw_request(&conn, &junk_sync).await,
        Some(Frame::MembershipSync(_))
    ));
    // A frame cut short: the stream is closed without an answer.
    assert_eq!(raw_request(&conn, &[0, 0, 0, 50, 0, 4, 1, 2]).await, None);
    // Random bytes as datagrams are dropped.
    for _ in 0..10 {
        let _ = conn.send_datagram(vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2].into());
    }

    // The same connection still works, and so does everyone else's.
    let ping = klf_proto::encode(&Frame::Ping(Ping { payload: vec![7] }), &Limits::default())
        .expect("encode");
    assert!(matches!(
        raw_request(&conn, &ping).await,
        Some(Frame::Pong(_))
    ));
    assert!(
        conn.close_reason().is_none(),
        "bad frames must not close the connection"
    );
    node_still_serves(&mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_are_refused() {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    let creds = DataDir::new(mesh.dir.path().join("node1"))
        .load_credentials()
        .expect("creds");
    let mesh_id = mesh.nodes[0].settings().mesh_id.clone();
    let endpoint = endpoint_with(tls::mesh_client_config(&creds).expect("tls"));

    // Garbage instead of Hello.
    let conn = connect(&endpoint, &mesh).await.expect("connects");
    assert_eq!(
        error_code(raw_request(&conn, &[0, 0, 0, 2, 0, 4]).await),
        Some(ErrorCode::Malformed)
    );
    // Hello for another mesh.
    let conn = connect(&endpoint, &mesh).await.expect("connects");
    assert_eq!(
        error_code(raw_request(&conn, &hello_of(&creds, "other-mesh")).await),
        Some(ErrorCode::Unauthorized)
    );
    // Hello claiming to be another node than the certificate says.
    let mut impostor = creds.clone();
    impostor.node_id = mesh.nodes[0].settings().node_id.clone();
    let conn = connect(&endpoint, &mesh).await.expect("connects");
    assert_eq!(
        error_code(raw_request(&conn, &hello_of(&impostor, &mesh_id)).await),
        Some(ErrorCode::Unauthorized)
    );
    // Hello with only a future major version.
    let future = klf_proto::encode(
        &Frame::Hello(Hello {
            protocol_versions: vec![klf_proto::ProtocolVersion {
                major: 99,
                minor: 0,
            }],
            node_id: creds.node_id.clone(),
            mesh_id: mesh_id.clone(),
            features: vec![],
        }),
        &Limits::default(),
    )
    .expect("encode");
    let conn = connect(&endpoint, &mesh).await.expect("connects");
    assert_eq!(
        error_code(raw_request(&conn, &future).await),
        Some(ErrorCode::Incompatible)
    );
    node_still_serves(&mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_mesh_certificate_are_refused() {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    let creds = DataDir::new(mesh.dir.path().join("node1"))
        .load_credentials()
        .expect("creds");

    // No client certificate on klf/1: the node closes the connection with a reason.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(creds.ca_der.clone()).expect("root");
    let mut anonymous = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![klf_proto::ALPN_MESH.to_vec()];
    let endpoint = endpoint_with(anonymous);
    let conn = connect(&endpoint, &mesh)
        .await
        .expect("handshake completes");
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed in time");
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c) if String::from_utf8_lossy(&c.reason).contains("certificate")),
        "{reason:?}"
    );

    // A certificate from another mesh's CA (presented to a server it trusts): the handshake fails.
    let other = InProcessMesh::start(1).await.expect("other mesh");
    let foreign = DataDir::new(other.dir.path().join("node0"))
        .load_credentials()
        .expect("foreign creds");
    let mut mixed = foreign.clone();
    mixed.ca_der = creds.ca_der.clone();
    let endpoint = endpoint_with(tls::mesh_client_config(&mixed).expect("tls"));
    let refused = match connect(&endpoint, &mesh).await {
        Err(e) => e.to_string(),
        // TLS 1.3 clients may finish before the server checks their certificate; then the first
        // stream fails.
        Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("closed in time")
            .to_string(),
    };
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");

    // On the join ALPN, only a JoinRequest is allowed.
    let fingerprint = klf_actors::security::sha256(&creds.ca_der);
    let endpoint = endpoint_with(tls::join_client_config(fingerprint).expect("tls"));
    let conn = connect(&endpoint, &mesh).await.expect("join connection");
    let ping = klf_proto::encode(&Frame::Ping(Ping { payload: vec![] }), &Limits::default())
        .expect("encode");
    assert_eq!(
        error_code(raw_request(&conn, &ping).await),
        Some(ErrorCode::Unauthorized)
    );
    let conn = connect(&endpoint, &mesh).await.expect("join connection");
    assert_eq!(
        error_code(raw_request(&conn, &[0xff; 16]).await),
        Some(ErrorCode::FrameTooLarge)
    );

    node_still_serves(&mesh).await;
}

/// A client endpoint on the join ALPN, pinning node0's mesh CA as a join token would, sending from
/// `source`.
fn join_endpoint(mesh: &InProcessMesh, source: &str) -> quinn::Endpoint {
    let creds = DataDir::new(mesh.dir.path().join("node1"))
        .load_credentials()
        .expect("creds");
    let fingerprint = klf_actors::security::sha256(&creds.ca_der);
    let quic = QuicClientConfig::try_from(tls::join_client_config(fingerprint).expect("tls"))
        .expect("quic client config");
    let mut endpoint =
        quinn::Endpoint::client(source.parse().expect("source address")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// What one connection on the join ALPN got.
#[derive(Debug)]
enum JoinAttempt {
    /// The node read the frame and answered it.
    Answered(Option<Frame>),
    /// The node closed the connection without reading anything.
    TurnedAway(quinn::ConnectionError),
}

/// Opens a join connection and sends a Ping, which is not allowed there: an admitted attempt is
/// answered with an error frame, a rate-limited one is closed.
async fn join_attempt(endpoint: &quinn::Endpoint, mesh: &InProcessMesh) -> JoinAttempt {
    let conn = match connect(endpoint, mesh).await {
        Ok(conn) => conn,
        Err(e) => return JoinAttempt::TurnedAway(e),
    };
    let ping = klf_proto::encode(&Frame::Ping(Ping { payload: vec![] }), &Limits::default())
        .expect("encode");
    let answer = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(&ping).await.ok()?;
        send.finish().ok()?;
        recv.read_to_end(1 << 20).await.ok()
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the node answers or closes in time");
    let attempt = match (answer, conn.close_reason()) {
        (Some(bytes), _) => JoinAttempt::Answered(
            klf_proto::decode(&bytes, &Limits::default())
                .ok()
                .map(|(frame, _)| frame),
        ),
        (None, Some(reason)) => JoinAttempt::TurnedAway(reason),
        (None, None) => panic!("the stream failed but the connection is open"),
    };
    conn.close(0u32.into(), b"done");
    attempt
}

/// The application close code and reason of a connection the node closed.
fn app_close(reason: &quinn::ConnectionError) -> Option<(u64, String)> {
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => Some((
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_attempt_that_stalls_is_cut_off_at_the_deadline() {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    let endpoint = join_endpoint(&mesh, "127.0.0.1:0");
    let conn = connect(&endpoint, &mesh).await.expect("join connection");
    let started = Instant::now();
    // A JoinRequest header announcing 1000 bytes, a few of them, then nothing.
    let (mut send, _recv) = conn.open_bi().await.expect("stream opens");
    send.write_all(&[0, 0, 0x03, 0xe8, 0, 50, 1, 2, 3])
        .await
        .expect("header sent");

    // The stalled client holds nothing members need.
    node_still_serves(&mesh).await;

    let reason = tokio::time::timeout(JOIN_READ_DEADLINE + Duration::from_secs(5), conn.closed())
        .await
        .expect("closed after the deadline");
    let elapsed = started.elapsed();
    let (code, text) = app_close(&reason).unwrap_or_else(|| panic!("{reason:?}"));
    assert_eq!(code, 0x104, "{text}");
    assert!(
        text.contains("no complete join request within 5s"),
        "{text}"
    );
    assert!(
        elapsed + Duration::from_millis(500) >= JOIN_READ_DEADLINE
            && elapsed <= JOIN_READ_DEADLINE + Duration::from_secs(3),
        "closed after {elapsed:?}, the deadline is {JOIN_READ_DEADLINE:?}"
    );
    node_still_serves(&mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_join_request_is_refused_from_its_header() {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    let endpoint = join_endpoint(&mesh, "127.0.0.1:0");
    let conn = connect(&endpoint, &mesh).await.expect("join connection");
    // A JoinRequest announcing 1 MiB (fine between members, far over the join limit), of which
    // only 1 KiB is sent and the stream left open: had the node waited for the body it would
    // answer only at the read deadline.
    let (mut send, mut recv) = conn.open_bi().await.expect("stream opens");
    let mut bytes = (1u32 << 20).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0, 50]);
    bytes.extend_from_slice(&[0; 1024]);
    let _ = send.write_all(&bytes).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(JOIN_READ_DEADLINE, recv.read_to_end(1 << 16))
        .await
        .expect("answered before the read deadline")
        .expect("an answer");
    assert!(started.elapsed() < JOIN_READ_DEADLINE);
    let (frame, _) = klf_proto::decode(&answer, &Limits::default()).expect("a frame");
    let Frame::Error(error) = frame else {
        panic!("expected an error frame, got {frame:?}");
    };
    assert_eq!(error.code, ErrorCode::FrameTooLarge);
    assert!(
        error.message.contains("1048576") && error.message.contains("65536"),
        "{}",
        error.message
    );
    node_still_serves(&mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_flood_from_one_source_is_rate_limited_while_members_keep_serving() {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    let burst = usize::try_from(JOIN_RATE.burst).expect("small");
    let flood = 3 * burst;
    let flooder = join_endpoint(&mesh, "127.0.0.1:0");
    let started = Instant::now();
    let flood_over = AtomicBool::new(false);
    let flood_task = async {
        let mut attempts = Vec::new();
        for _ in 0..flood {
            attempts.push(join_attempt(&flooder, &mesh).await);
        }
        flood_over.store(true, Ordering::Release);
        attempts
    };
    // Members ping each other for as long as the flood lasts.
    let pings = async {
        let mut pings = 0;
        while !flood_over.load(Ordering::Acquire) {
            members_ping(&mesh).await;
            pings += 1;
        }
        pings
    };
    let (attempts, pings) = tokio::join!(flood_task, pings);
    assert!(pings > 0);
    let elapsed = started.elapsed();
    let answered = attempts
        .iter()
        .filter(|a| matches!(a, JoinAttempt::Answered(_)))
        .count();
    // The burst, plus what refilled while the flood lasted.
    let refilled = elapsed.as_secs_f64() / JOIN_RATE.refill_every.as_secs_f64();
    assert!(
        answered as f64 <= burst as f64 + refilled.ceil(),
        "{answered} of {flood} attempts in {elapsed:?} were served"
    );
    for attempt in &attempts {
        match attempt {
            JoinAttempt::Answered(frame) => {
                assert_eq!(error_code(frame.clone()), Some(ErrorCode::Unauthorized));
            }
            JoinAttempt::TurnedAway(reason) => {
                let (code, text) = app_close(reason).unwrap_or_else(|| panic!("{reason:?}"));
                assert_eq!(code, 0x103, "{text}");
                assert!(
                    text.contains("too many attempts from 127.0.0.1; retry in"),
                    "{text}"
                );
            }
        }
    }

    // A real join from the flooded source is told why it was refused. Empty the bucket first,
    // then redeem at once; should a refill slip in between, the token is spent and we go again.
    let mut refusal = None;
    for _ in 0..3 {
        while matches!(
            join_attempt(&flooder, &mesh).await,
            JoinAttempt::Answered(_)
        ) {}
        let token = mesh.nodes[0]
            .create_join_token(Duration::from_secs(60))
            .expect("token");
        match redeem(&token, "late", "127.0.0.1:1", "").await {
            Err(JoinError::Refused(message)) => {
                refusal = Some(message);
                break;
            }
            Ok(_) => continue,
            Err(other) => panic!("expected a refusal, got {other}"),
        }
    }
    let refusal = refusal.expect("a join from the flooded source is refused");
    assert!(refusal.contains("too many attempts"), "{refusal}");

    // Another source is not held back by this one's flood.
    #[cfg(target_os = "linux")]
    {
        let other = join_endpoint(&mesh, "127.0.0.2:0");
        let attempt = join_attempt(&other, &mesh).await;
        assert!(
            matches!(attempt, JoinAttempt::Answered(Some(Frame::Error(ref e))) if e.code == ErrorCode::Unauthorized),
            "{attempt:?}"
        );
    }
    node_still_serves(&mesh).await;
}
