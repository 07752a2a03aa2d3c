//! The host capabilities of issue 5 on real nodes: `ctx.secret` reads the node's secrets
//! directory, `ctx.crypto` seals with a secret key, `ctx.model` reaches a real HTTP
//! chat-completions server, and `ctx.schedule` makes periodic calls through the router.

use std::time::Duration;

use klf_actors::model::ModelConfig;
use klf_actors::node::{Node, RunOptions};
use klf_actors::router::{InvokeErrorKind, InvokeRequest};
use klf_tests::model_server::{ModelServer, Scripted};
use klf_tests::{InProcessMesh, wait_until, write_package};
use serde_json::{Value, json};

const VAULT: &str = r#"
import { BaseFunction } from "klf:base";
export default class Vault extends BaseFunction {
  async execute(input, ctx) {
    switch (input.op) {
      case "seal": {
        const sealed = ctx.crypto.encrypt(input.text, { secret: "api-key", aad: "v1" });
        return { sealed, opened: ctx.crypto.decrypt(sealed, { secret: "api-key", aad: "v1" }),
                 keyLength: ctx.secret("api-key").length };
      }
      case "ask":
        return await ctx.model.complete({ system: "answer briefly", prompt: input.q });
      case "start":
        return { id: ctx.schedule.every(100, "vault", { op: "tick" }) };
      case "tick":
        await ctx.kv.put("ticks", ((await ctx.kv.get("ticks")) ?? 0) + 1);
        return null;
      case "count":
        return { ticks: (await ctx.kv.get("ticks")) ?? 0, schedules: ctx.schedule.list().length };
      default:
        throw new Error(`unknown op ${input.op}`);
    }
  }
}
"#;

const MANIFEST: &str = r#"capabilities = ["secret", "crypto", "model", "schedule", "kv"]
secrets = ["api-key"]
[limits]
timeout_ms = 5000"#;

async fn call(node: &Node, input: Value) -> Result<Value, klf_actors::router::InvokeError> {
    node.invoke(InvokeRequest::new("vault", input, Duration::from_secs(10)))
        .await
        .map(|outcome| outcome.output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_crypto_model_and_schedules_work_on_a_real_mesh() {
    let model = ModelServer::start(vec![Scripted::Echo])
        .await
        .expect("model server");
    let options = RunOptions {
        model: Some(ModelConfig {
            base_url: model.base_url(),
            model: "fake-gpt".into(),
            api_key: Some("sk-test".into()),
            max_attempts: 2,
            backoff: Duration::from_millis(10),
        }),
        ..RunOptions::loopback()
    };
    let mesh = InProcessMesh::start_with_options(2, options)
        .await
        .expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    for i in 0..2 {
        let secrets = mesh.data_dir(i).secrets_dir();
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        std::fs::write(secrets.join("api-key"), "correct horse battery staple\n").expect("secret");
    }
    let package = write_package(mesh.dir.path(), "vault", "1.0.0", MANIFEST, VAULT);
    mesh.nodes[0]
        .publish(package, 1, "admin")
        .await
        .expect("deploy");
    assert!(
        wait_until(Duration::from_secs(3), || async {
            mesh.nodes
                .iter()
                .all(|n| n.catalog().deployment("vault").is_some())
        })
        .await
    );

    // From both nodes, so at least one call crosses the mesh to the single replica.
    for node in &mesh.nodes {
        let sealed = call(node, json!({ "op": "seal", "text": "4111 1111" }))
            .await
            .expect("seal");
        assert_eq!(sealed["opened"], "4111 1111");
        assert_eq!(
            sealed["keyLength"], 28,
            "the trailing newline is not part of the secret"
        );
        assert_ne!(sealed["sealed"]["ciphertext"], "4111 1111");
    }

    let answer = call(&mesh.nodes[1], json!({ "op": "ask", "q": "what is KLF?" }))
        .await
        .expect("model answers");
    assert_eq!(answer["text"], "echo: what is KLF?");
    assert_eq!(answer["model"], "fake-gpt");
    let sent = model.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["messages"][0],
        json!({ "role": "system", "content": "answer briefly" })
    );

    call(&mesh.nodes[1], json!({ "op": "start" }))
        .await
        .expect("schedule");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            call(&mesh.nodes[0], json!({ "op": "count" }))
                .await
                .is_ok_and(|count| count["ticks"].as_u64().unwrap_or(0) >= 3)
        })
        .await,
        "the periodic schedule should have ticked three times"
    );
    let count = call(&mesh.nodes[0], json!({ "op": "count" }))
        .await
        .expect("count");
    assert_eq!(count["schedules"], 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_or_a_secret_the_errors_say_what_to_do() {
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    let package = write_package(mesh.dir.path(), "vault", "1.0.0", MANIFEST, VAULT);
    mesh.nodes[0]
        .publish(package, 1, "admin")
        .await
        .expect("deploy");

    let error = call(&mesh.nodes[0], json!({ "op": "ask", "q": "hi" }))
        .await
        .unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::HostError);
    assert!(
        error
            .message
            .contains("no model provider is configured on node node0"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("KLF_MODEL_BASE_URL"),
        "{}",
        error.message
    );

    let error = call(&mesh.nodes[0], json!({ "op": "seal", "text": "x" }))
        .await
        .unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::HostError);
    assert!(
        error
            .message
            .contains("secret \"api-key\" is not set on node node0"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("secrets/api-key"),
        "{}",
        error.message
    );

    // The node keeps serving.
    let count = call(&mesh.nodes[0], json!({ "op": "count" }))
        .await
        .expect("count");
    assert_eq!(count["ticks"], 0);
    mesh.shutdown().await;
}
