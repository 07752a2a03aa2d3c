//! A slow disk under one function's `ctx.kv` does not stall the node: while kv writes wait at the
//! store's commit gate (a disk that does not answer, on demand), other functions on the same node
//! keep answering, and the held writes complete once the gate opens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use klf_actors::node::Node;
use klf_actors::router::{InvokeError, InvokeOutcome, InvokeRequest};
use klf_actors::store::CommitGate;
use klf_tests::{InProcessMesh, write_package};
use serde_json::json;

/// Runtime workers of the test, and kv writes held at once: were a commit to wait on a worker,
/// every worker would be taken and nothing else on the node could run.
const WORKERS: usize = 2;
/// Calls that must complete while the writes are held.
const CALLS: usize = 40;
/// A bound on each phase, so that a stalled node fails the test instead of hanging it. Not a
/// measurement: a healthy node finishes each phase far sooner.
const PATIENCE: Duration = Duration::from_secs(60);

const WRITER: &str = r#"
import { BaseFunction } from "klf:base";
export default class Writer extends BaseFunction {
  async execute(input, ctx) {
    await ctx.kv.put(input.key, input.value);
    return { stored: input.key };
  }
}
"#;

/// Answers from its input and reads its own kv namespace (reads do not wait for writes).
const ECHO: &str = r#"
import { BaseFunction } from "klf:base";
export default class Echo extends BaseFunction {
  async execute(input, ctx) {
    return { n: input.n, seen: (await ctx.kv.get("k")) ?? null };
  }
}
"#;

/// Opens the gate when dropped, so that a failing test releases the threads it holds.
struct OpenOnDrop(Arc<CommitGate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// `future`'s output if it finishes within `limit`. The future is polled here, on the test's own
/// thread, and the limit is kept by a plain OS thread: if every runtime worker were blocked, tasks
/// spawned on them would never run and tokio's timers would never fire, so a `tokio::time::timeout`
/// would hang along with the node instead of failing the test.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    let (expire, expired) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = expire.send(());
    });
    tokio::select! {
        output = future => Some(output),
        _ = expired => None,
    }
}

async fn invoke(
    node: &Node,
    function: &str,
    input: serde_json::Value,
) -> Result<InvokeOutcome, InvokeError> {
    node.invoke(InvokeRequest::new(function, input, Duration::from_secs(30)))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_kv_writes_do_not_stall_other_invocations_on_the_same_node() {
    assert_eq!(
        tokio::runtime::Handle::current().metrics().num_workers(),
        WORKERS,
        "the test needs as few workers as it holds writes"
    );
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    let node = mesh.nodes[0].clone();
    let version = semver::Version::new(1, 0, 0);
    // The writers' own limit must outlast the hold: the call waits for its write.
    let writer_manifest = "capabilities = [\"kv\"]\n[limits]\ntimeout_ms = 120000";
    let writers: Vec<String> = (0..WORKERS).map(|i| format!("writer-{i}")).collect();
    for name in &writers {
        let package = write_package(mesh.dir.path(), name, "1.0.0", writer_manifest, WRITER);
        node.publish(package, 1, "admin").await.expect("publish");
        node.wait_serving(name, &version, json!({"key": "warm", "value": 0}), PATIENCE)
            .await
            .expect("writer serving");
    }
    let echo = write_package(
        mesh.dir.path(),
        "echo",
        "1.0.0",
        "capabilities = [\"kv\"]",
        ECHO,
    );
    node.publish(echo, 1, "admin").await.expect("publish echo");
    node.wait_serving("echo", &version, json!({"n": 0}), PATIENCE)
        .await
        .expect("echo serving");

    let store = node.store().expect("the node's store");
    let gate = CommitGate::closed();
    let _release = OpenOnDrop(gate.clone());
    store.set_commit_gate(Some(gate.clone()));
    let held: Vec<_> = writers
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (node, name) = (node.clone(), name.clone());
            tokio::spawn(async move {
                node.invoke(InvokeRequest::new(
                    &name,
                    json!({"key": "k", "value": i}),
                    Duration::from_secs(120),
                ))
                .await
            })
        })
        .collect();
    within(PATIENCE, gate.wait_held(WORKERS))
        .await
        .expect("both kv writes reach the gate");

    // Another function, called many times, one after another and all at once.
    let answers = within(PATIENCE, async {
        let mut answers = Vec::new();
        for n in 0..CALLS / 2 {
            answers.push(invoke(&node, "echo", json!({"n": n})).await);
        }
        let together = (CALLS / 2..CALLS).map(|n| invoke(&node, "echo", json!({"n": n})));
        answers.extend(futures_util::future::join_all(together).await);
        answers
    })
    .await
    .expect("calls to another function complete while the kv writes are held");
    for (n, answer) in answers.into_iter().enumerate() {
        let outcome = answer.unwrap_or_else(|e| panic!("echo {n}: {e}"));
        assert_eq!(outcome.output, json!({"n": n, "seen": null}));
    }
    assert_eq!(
        gate.held(),
        WORKERS,
        "the writes were still held while those calls completed"
    );
    assert!(held.iter().all(|write| !write.is_finished()));

    gate.open();
    for (i, write) in held.into_iter().enumerate() {
        let outcome = within(PATIENCE, write)
            .await
            .expect("a released write completes")
            .expect("the write's task")
            .unwrap_or_else(|e| panic!("writer-{i}: {e}"));
        assert_eq!(outcome.output, json!({"stored": "k"}));
        let stored = store.kv_get(&writers[i], "k").expect("read back");
        assert_eq!(stored, Some(i.to_string().into_bytes()));
    }
}
