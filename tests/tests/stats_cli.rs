//! `klf fn stats` and `klf fn rollback` against real `klf` processes: mesh-wide statistics over
//! the API, and pinning a published version until the next deploy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use klf_tests::processes::{ProcessMesh, klf_json, klf_run};
use serde_json::Value;

/// The `hello` example as `version`, in a folder under `dir`.
fn hello(dir: &Path, version: &str) -> String {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let folder = dir.join(format!("hello-{version}"));
    std::fs::create_dir_all(&folder).expect("mkdir");
    let manifest = std::fs::read_to_string(source.join("klf.toml"))
        .expect("manifest")
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
    std::fs::write(folder.join("klf.toml"), manifest).expect("write manifest");
    std::fs::copy(source.join("main.js"), folder.join("main.js")).expect("copy source");
    folder.to_string_lossy().into_owned()
}

/// `GET /metrics` of the node in `data`, with its admin token or none: (status, body).
fn scrape(data: &str, with_token: bool) -> (u16, String) {
    use std::io::{Read, Write};
    let dir = klf_actors::node::DataDir::new(data);
    let api = dir
        .load_settings()
        .expect("node.json")
        .api
        .expect("the node has an API address");
    let token = dir.admin_bearer().expect("admin token");
    let mut stream = std::net::TcpStream::connect(&api).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = if with_token {
        format!("Authorization: Bearer {token}\r\n")
    } else {
        String::new()
    };
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {api}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The sum of the samples of `metric` whose labels include `function="hello"`.
fn hello_samples(text: &str, metric: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains("function=\"hello\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn stats_and_rollback_through_the_cli() {
    let work = tempfile::tempdir().expect("tmp");
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let token = mesh.nodes[0].token("10m").expect("token");
    mesh.join("n2", &token).expect("n2");
    let d1 = mesh.nodes[0].data.to_string_lossy().into_owned();
    let d2 = mesh.nodes[1].data.to_string_lossy().into_owned();

    let (ok, stdout, _) = klf_run(&["fn", "stats", "--data", &d1]);
    assert!(ok && stdout.contains("no calls served yet"), "{stdout}");
    for version in ["1.0.0", "1.1.0"] {
        let (ok, _, stderr) = klf_run(&[
            "fn",
            "deploy",
            &hello(work.path(), version),
            "--replicas",
            "2",
            "--data",
            &d1,
        ]);
        assert!(ok, "{stderr}");
    }
    // Calls from both nodes (each serves its own: two replicas on two nodes).
    let invoke = |data: &str| {
        let (ok, stdout, stderr) = klf_run(&[
            "fn",
            "invoke",
            "hello",
            "--input",
            "{\"name\":\"KLF\"}",
            "--data",
            data,
        ]);
        ok && stdout.contains("Hello, KLF!") || {
            eprintln!("invoke: {stderr}");
            false
        }
    };
    assert!(
        mesh.wait(Duration::from_secs(10), |_| invoke(&d2)),
        "n2 should serve hello\n{}",
        mesh.logs()
    );
    // Both nodes serve 1.1.0 before the counted calls.
    assert!(
        mesh.wait(Duration::from_secs(5), |_| {
            [&d1, &d2].iter().all(|data| {
                klf_json(&["fn", "info", "hello", "--json", "--data", data])["served"] == "1.1.0"
            })
        }),
        "both nodes should serve hello@1.1.0"
    );
    // Whatever ran so far (the deploy may run the package's examples, an attempt above may have
    // failed while the instance started, or been served by 1.0.0) is the baseline.
    let totals = |data: &str| {
        let stats = klf_json(&["fn", "stats", "hello", "--json", "--data", data]);
        let all = stats.as_array().cloned().unwrap_or_default();
        let sum = |name: &str| all.iter().filter_map(|s| s[name].as_u64()).sum::<u64>();
        (sum("calls"), sum("errors"))
    };
    let (calls, errors) = totals(&d2);
    assert!(calls >= 1);
    for data in [&d1, &d2, &d1] {
        assert!(invoke(data));
    }
    // Either node shows the mesh's totals: every call counted once, where it ran.
    assert_eq!(totals(&d1), (calls + 3, errors));
    // Prometheus sees the same calls, each on the node that served it.
    let (status, _) = scrape(&d1, false);
    assert_eq!(status, 401, "/metrics needs a token");
    let (status, n1) = scrape(&d1, true);
    assert_eq!(status, 200, "{n1}");
    let (_, n2) = scrape(&d2, true);
    assert!(
        n1.contains("# TYPE klf_function_latency_seconds histogram"),
        "{n1}"
    );
    assert!(n1.contains("klf_members{state=\"alive\"} "), "{n1}");
    let scraped = hello_samples(&n1, "klf_function_calls_total")
        + hello_samples(&n2, "klf_function_calls_total");
    assert_eq!(scraped, calls + 3, "n1:\n{n1}\nn2:\n{n2}");
    let counted = hello_samples(&n1, "klf_function_latency_seconds_count")
        + hello_samples(&n2, "klf_function_latency_seconds_count");
    assert_eq!(counted, calls + 3);
    let stats = klf_json(&["fn", "stats", "hello", "--json", "--data", &d1]);
    let stats: Vec<Value> = stats
        .as_array()
        .expect("array")
        .iter()
        .filter(|s| s["version"] == "1.1.0")
        .cloned()
        .collect();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0]["function"], "hello");
    assert!(
        stats[0]["calls"].as_u64().is_some_and(|n| n >= 3),
        "{stats:?}"
    );
    assert!(
        stats[0]["p99_us"].as_u64().is_some_and(|p| p > 0),
        "{stats:?}"
    );
    let (ok, table, stderr) = klf_run(&["fn", "stats", "--data", &d2]);
    assert!(ok, "{stderr}");
    assert!(table.starts_with("FUNCTION"), "{table}");
    assert!(table.contains("hello@1.1.0"), "{table}");

    // Rollback: refused for a version that is not published, then pinned everywhere.
    let (ok, _, stderr) = klf_run(&["fn", "rollback", "hello", "0.9.0", "--data", &d2]);
    assert!(!ok, "0.9.0 is not published");
    assert!(
        stderr.contains("hello@0.9.0 is not published (published: 1.1.0, 1.0.0)"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = klf_run(&["fn", "rollback", "hello", "1.0.0", "--data", &d2]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("hello now serves 1.0.0"), "{stdout}");
    assert!(
        mesh.wait(Duration::from_secs(5), |_| {
            let info = klf_json(&["fn", "info", "hello", "--json", "--data", &d1]);
            info["served"] == "1.0.0" && info["pinned"] == "1.0.0"
        }),
        "n1 should serve the pinned 1.0.0\n{}",
        mesh.logs()
    );
    let calls_of_v1 = || {
        let stats = klf_json(&["fn", "stats", "hello", "--json", "--data", &d2]);
        stats.as_array().and_then(|a| {
            a.iter()
                .find(|s| s["version"] == "1.0.0")
                .and_then(|s| s["calls"].as_u64())
        })
    };
    let before = calls_of_v1().unwrap_or(0);
    assert!(invoke(&d1));
    assert_eq!(
        calls_of_v1(),
        Some(before + 1),
        "the call after the rollback is counted for 1.0.0"
    );
}
