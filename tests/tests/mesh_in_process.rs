//! Several real nodes in one test process: fast checks of forming a mesh, failure detection,
//! graceful leave and mesh isolation.

use std::time::{Duration, Instant};

use klf_actors::mesh::{MemberState, PeerAddr, TransportError, TransportMsg};
use klf_proto::{Frame, Ping};
use klf_tests::{InProcessMesh, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_in_one_process_form_a_mesh_and_see_leave_and_failure() {
    let mesh = InProcessMesh::start(3).await.expect("mesh starts");
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(5))
            .await,
        "every node should see three alive within 5 s"
    );

    // Graceful leave: peers are told, and show `left` at once.
    mesh.nodes[2].shutdown().await;
    assert!(
        wait_until(Duration::from_secs(2), || async {
            mesh.state_of(0, "node2").await == Some(MemberState::Left)
                && mesh.state_of(1, "node2").await == Some(MemberState::Left)
        })
        .await,
        "peers should show the leaving node `left`"
    );

    // A node that dies silently is detected by failure detection.
    mesh.nodes[1].kill().await;
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            mesh.state_of(0, "node1").await == Some(MemberState::Down)
        })
        .await,
        "the survivor should see the killed node down within 10 s"
    );
    eprintln!(
        "in-process: killed node seen down after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        mesh.count(0, MemberState::Alive).await,
        1,
        "only the survivor itself is alive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_of_another_mesh_cannot_connect() {
    let a = InProcessMesh::start(1).await.expect("mesh a");
    let b = InProcessMesh::start(1).await.expect("mesh b");
    for (from, to) in [(&a, &b), (&b, &a)] {
        let target = to.nodes[0].identity().addr.clone();
        let answer = ractor::call!(from.nodes[0].transport(), |reply| TransportMsg::Request {
            to: PeerAddr::addr(target.clone()),
            frame: Frame::Ping(Ping { payload: vec![1] }),
            reply,
        })
        .expect("transport answers");
        match answer {
            Err(TransportError::Unreachable { reason, .. }) => {
                assert!(
                    reason.to_lowercase().contains("certificate"),
                    "reason: {reason}"
                );
            }
            other => panic!("a node of another mesh must not connect, got {other:?}"),
        }
    }
    // Neither learned of the other.
    assert_eq!(a.nodes[0].members().await.expect("members").len(), 1);
    assert_eq!(b.nodes[0].members().await.expect("members").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peer_fails_fast_and_backs_off() {
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    // Nothing listens on this port.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let ping = || Frame::Ping(Ping { payload: vec![] });
    let first = ractor::call!(mesh.nodes[0].transport(), |reply| TransportMsg::Request {
        to: PeerAddr::addr(addr.clone()),
        frame: ping(),
        reply,
    })
    .expect("transport answers");
    assert!(
        matches!(first, Err(TransportError::Unreachable { .. })),
        "{first:?}"
    );
    let second = ractor::call!(mesh.nodes[0].transport(), |reply| TransportMsg::Request {
        to: PeerAddr::addr(addr.clone()),
        frame: ping(),
        reply,
    })
    .expect("transport answers");
    assert!(
        matches!(second, Err(TransportError::BackingOff { .. })),
        "a second attempt right after a failed dial should back off: {second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_heals_the_view_by_itself() {
    use std::collections::HashSet;
    let mesh = InProcessMesh::start(3).await.expect("mesh starts");
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(5))
            .await
    );
    let id = |i: usize| mesh.nodes[i].identity().node_id.clone();
    let cut = |i: usize, from: HashSet<String>| {
        mesh.nodes[i]
            .transport()
            .cast(TransportMsg::SetPartitioned(from))
            .expect("transport alive");
    };
    // node2 on one side, node0 and node1 on the other.
    cut(2, HashSet::from([id(0), id(1)]));
    cut(0, HashSet::from([id(2)]));
    cut(1, HashSet::from([id(2)]));
    assert!(
        wait_until(Duration::from_secs(15), || async {
            mesh.state_of(0, "node2").await == Some(MemberState::Down)
                && mesh.state_of(1, "node2").await == Some(MemberState::Down)
                && mesh.count(2, MemberState::Alive).await == 1
        })
        .await,
        "both sides should declare the other down during the partition"
    );
    for i in 0..3 {
        cut(i, HashSet::new());
    }
    let healed = Instant::now();
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(15))
            .await,
        "after the partition heals, every node should see three alive again without help"
    );
    eprintln!(
        "in-process: view healed {:?} after the partition ended",
        healed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_data_dir_in_use_is_refused_before_it_binds_anything() {
    let mut mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(10))
            .await
    );
    let second =
        klf_actors::node::Node::start(&mesh.data_dir(1), klf_actors::node::RunOptions::loopback())
            .await;
    let Err(error) = second else {
        panic!("a second node started on node1's data dir");
    };
    let message = error.to_string();
    assert!(
        matches!(error, klf_actors::node::NodeError::InUse { .. }),
        "{message}"
    );
    assert!(
        message.contains("is in use by another klf process (pid "),
        "{message}"
    );
    // The first keeps its place in the mesh: still alive for its peer, still answering.
    assert_eq!(mesh.count(0, MemberState::Alive).await, 2);
    assert_eq!(mesh.count(1, MemberState::Alive).await, 2);
    // Stopped, its dir can be started again (the lock goes with the actors).
    mesh.nodes[1].kill().await;
    mesh.restart(1).await.expect("restart on the released dir");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(10))
            .await
    );
    mesh.shutdown().await;
}
