//! Real `klf` processes on loopback, driven through the CLI: forming a mesh by init + token + join,
//! failure detection, restart, graceful leave, and refused joins.

use std::time::{Duration, Instant};

use klf_tests::processes::ProcessMesh;

fn three_node_mesh() -> ProcessMesh {
    let mut mesh = ProcessMesh::new().expect("temp dir");
    mesh.init("n1").expect("n1 starts");
    for name in ["n2", "n3"] {
        let token = mesh.nodes[0].token("10m").expect("token");
        mesh.join(name, &token)
            .unwrap_or_else(|e| panic!("{name} joins: {e}"));
    }
    let started = Instant::now();
    assert!(
        mesh.wait(Duration::from_secs(5), |m| m
            .nodes
            .iter()
            .all(|n| n.count("alive") == 3)),
        "every node should list all three alive within 5 s\n{}",
        mesh.logs()
    );
    eprintln!("three processes all alive after {:?}", started.elapsed());
    mesh
}

#[test]
fn killed_node_is_seen_down_by_every_peer_and_rejoins_after_restart() {
    let mut mesh = three_node_mesh();
    mesh.nodes[2].kill();
    let killed = Instant::now();
    let seen_down = mesh.wait(Duration::from_secs(10), |m| {
        m.nodes[..2].iter().all(|n| n.state_of("n3") != "alive")
    });
    let detection = killed.elapsed();
    assert!(
        seen_down,
        "both survivors should stop showing n3 alive within 10 s\n{}",
        mesh.logs()
    );
    eprintln!("SIGKILLed node seen not alive by both peers after {detection:?}");
    assert!(
        mesh.wait(Duration::from_secs(10), |m| m.nodes[..2]
            .iter()
            .all(|n| n.state_of("n3") == "down")),
        "the killed node should end up down\n{}",
        mesh.logs()
    );

    mesh.nodes[2]
        .restart()
        .expect("n3 restarts from its data dir");
    let restarted = Instant::now();
    assert!(
        mesh.wait(Duration::from_secs(10), |m| m
            .nodes
            .iter()
            .all(|n| n.count("alive") == 3)),
        "the restarted node should be alive everywhere\n{}",
        mesh.logs()
    );
    eprintln!(
        "restarted node alive everywhere after {:?}",
        restarted.elapsed()
    );
}

#[test]
fn sigterm_leaves_gracefully_and_peers_show_left() {
    let mut mesh = three_node_mesh();
    let left = Instant::now();
    assert!(
        mesh.nodes[1]
            .terminate(Duration::from_secs(5))
            .expect("terminate"),
        "SIGTERM should end the node with exit code 0\n{}",
        mesh.logs()
    );
    assert!(
        mesh.wait(Duration::from_secs(3), |m| {
            [&m.nodes[0], &m.nodes[2]]
                .iter()
                .all(|n| n.state_of("n2") == "left")
        }),
        "peers should show the node `left` at once\n{}",
        mesh.logs()
    );
    eprintln!(
        "graceful leave seen by both peers after {:?}",
        left.elapsed()
    );
    // It comes back on its own when started again.
    mesh.nodes[1].restart().expect("n2 restarts");
    assert!(
        mesh.wait(Duration::from_secs(10), |m| m
            .nodes
            .iter()
            .all(|n| n.count("alive") == 3)),
        "the node that left should be alive again after a restart\n{}",
        mesh.logs()
    );
}

#[test]
fn reused_expired_and_garbled_tokens_are_refused_with_clear_messages() {
    let mut mesh = ProcessMesh::new().expect("temp dir");
    mesh.init("seed").expect("seed starts");

    let token = mesh.nodes[0].token("10m").expect("token");
    mesh.join("first", &token).expect("a fresh token joins");
    let (status, text) = mesh.refused_join("second", &token);
    assert!(!status.success(), "a reused token must fail: {text}");
    assert!(
        text.contains("already used"),
        "reused token message: {text}"
    );

    let short = mesh.nodes[0].token("1s").expect("short token");
    let json = klf_tests::processes::klf(&[
        "token",
        "create",
        "--ttl",
        "1s",
        "--json",
        "--data",
        &mesh.nodes[0].data.to_string_lossy(),
    ]);
    assert!(json.status.success());
    // Wait for the expiry to pass (a condition on the clock, not a guessed sleep).
    let expires_at =
        serde_json::from_slice::<serde_json::Value>(&json.stdout).expect("json")["expires_at"]
            .as_u64()
            .expect("expires_at");
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        <= expires_at
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for expired in [short, json_token(&json.stdout)] {
        let (status, text) = mesh.refused_join("late", &expired);
        assert!(!status.success(), "an expired token must fail: {text}");
        assert!(text.contains("expired"), "expired token message: {text}");
    }

    for (garbled, needle) in [
        ("garbage-token", "not a KLF join token"),
        (&token[..token.len() / 2], "damaged"),
        ("klf1.%%%", "damaged"),
    ] {
        let (status, text) = mesh.refused_join("garbled", garbled);
        assert!(!status.success(), "a garbled token must fail: {text}");
        assert!(text.contains(needle), "garbled token {garbled:?}: {text}");
    }

    // A token whose CA fingerprint was tampered with: the seed cannot prove it is the pinned CA.
    let forged = forge_fingerprint(&mesh.nodes[0].token("10m").expect("token"));
    let (status, text) = mesh.refused_join("forged", &forged);
    assert!(!status.success(), "a forged token must fail: {text}");
    assert!(text.contains("pinned"), "forged token message: {text}");

    // The seed kept serving through all of this.
    assert!(mesh.nodes[0].healthy());
    assert_eq!(mesh.nodes[0].count("alive"), 2, "{}", mesh.logs());
}

fn json_token(stdout: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdout).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string()
}

fn forge_fingerprint(token: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = token.strip_prefix("klf1.").expect("prefix");
    let mut json: serde_json::Value =
        serde_json::from_slice(&engine.decode(body).expect("b64")).expect("json");
    json["ca_fingerprint"] = serde_json::Value::String("ab".repeat(32));
    format!(
        "klf1.{}",
        engine.encode(serde_json::to_vec(&json).expect("json"))
    )
}

#[test]
fn klf_demo_runs_to_completion() {
    let out = klf_tests::processes::klf(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "klf demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mesh formed"), "{stdout}");
    // The Chef built the product model's example from the three base classes, deployed it with 2 replicas,
    // and node2 got ranked opportunities for the bundled data.
    assert!(
        stdout.contains("BaseDataProcessor")
            && stdout.contains("BaseModelProcessor")
            && stdout.contains("BasePredictor"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deployed:   market-analysis@1.0.0 (2 replicas)"),
        "{stdout}"
    );
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result JSON: "))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
    let result: serde_json::Value = serde_json::from_str(result).expect("result JSON");
    assert_eq!(result["analyzed"], 6, "{result}");
    let best = &result["opportunities"][0];
    assert_eq!(best["signal"], "buy", "{result}");
    assert!(
        ["NOVA", "FLUX"].contains(&best["symbol"].as_str().unwrap_or("")),
        "{result}"
    );
    assert!(stdout.contains("tests:      "), "{stdout}");
    assert!(stdout.contains("ROI "), "{stdout}");
    assert!(
        stdout.contains(r#"node2 invoked hello -> {"message":"Hello, KLF!"}"#),
        "{stdout}"
    );
    assert!(stdout.contains("declared node1 down"), "{stdout}");
}
