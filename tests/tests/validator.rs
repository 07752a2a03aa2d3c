//! The validator every deploy path shares, against real `klf` processes: yanked releases (refused
//! dependencies, replication, `klf fn info`, `klf fn audit`) and static analysis on
//! `klf fn deploy`.

use std::path::Path;
use std::time::Duration;

use klf_tests::example_dir;
use klf_tests::processes::{ProcessMesh, klf_json, klf_run};
use serde_json::Value;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// A copy of example `name` under `dir` with `from` replaced by `to` in `file`.
fn changed(dir: &Path, name: &str, file: &str, from: &str, to: &str) -> String {
    let copy = dir.join(format!("{name}-{}", blake3_like(to)));
    copy_dir(&example_dir(name), &copy);
    let path = copy.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{file} of {name} lacks {from:?}");
    std::fs::write(&path, text.replace(from, to)).expect("write");
    copy.to_string_lossy().into_owned()
}

/// A short folder-name-safe tag of a text.
fn blake3_like(text: &str) -> String {
    let sum: u64 = text.bytes().fold(1469598103934665603, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    });
    format!("{sum:016x}")
}

#[test]
fn a_yank_replicates_shows_in_info_refuses_new_dependents_and_is_audited() {
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let token = mesh.nodes[0].token("10m").expect("token");
    mesh.join("n2", &token).expect("n2");
    let d1 = mesh.nodes[0].data.to_string_lossy().into_owned();
    let d2 = mesh.nodes[1].data.to_string_lossy().into_owned();
    let cleaner = example_dir("series-cleaner").to_string_lossy().into_owned();
    let average = example_dir("moving-average").to_string_lossy().into_owned();

    let calls_of = |name: &str| -> u64 {
        let stats = klf_json(&["fn", "stats", name, "--json", "--data", &d1]);
        stats
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["calls"].as_u64()).sum())
            .unwrap_or(0)
    };
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &cleaner, "--data", &d1]);
    assert!(ok, "{stderr}");
    assert_eq!(
        calls_of("series-cleaner"),
        0,
        "its own validation calls no one"
    );
    // moving-average's examples run against the deployed series-cleaner, through the router: its
    // two examples, 50 times each (and the load step), are calls series-cleaner served.
    let deployed = klf_json(&["fn", "deploy", &average, "--data", &d1, "--json"]);
    assert_eq!(deployed["perf"]["runs"], 100, "{deployed}");
    assert_eq!(
        deployed["perf"]["over_budget"],
        serde_json::json!([]),
        "{deployed}"
    );
    let served = calls_of("series-cleaner");
    assert!(
        served >= 100,
        "series-cleaner served {served} validation calls"
    );
    let audit = klf_json(&["fn", "audit", "--json", "--data", &d1]);
    assert_eq!(audit, serde_json::json!([]));

    // A yank needs NAME@VERSION and a published version.
    let (ok, _, stderr) = klf_run(&[
        "fn",
        "yank",
        "series-cleaner",
        "--reason",
        "x",
        "--data",
        &d1,
    ]);
    assert!(!ok && stderr.contains("NAME@VERSION"), "{stderr}");
    let (ok, _, stderr) = klf_run(&[
        "fn",
        "yank",
        "series-cleaner@9.9.9",
        "--reason",
        "x",
        "--data",
        &d1,
    ]);
    assert!(!ok && stderr.contains("not published"), "{stderr}");
    let (ok, stdout, stderr) = klf_run(&[
        "fn",
        "yank",
        "series-cleaner@1.0.0",
        "--reason",
        "drops negative numbers",
        "--data",
        &d1,
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("yanked series-cleaner@1.0.0: drops negative numbers"),
        "{stdout}"
    );

    // The yank reaches n2, and its `fn info` shows it.
    let mut info = Value::Null;
    assert!(
        mesh.wait(Duration::from_secs(10), |_| {
            info = klf_json(&["fn", "info", "series-cleaner", "--json", "--data", &d2]);
            info["yanked"]["reason"] == "drops negative numbers"
        }),
        "n2 should hold the yank: {info}\n{}",
        mesh.logs()
    );
    assert_eq!(info["yanked"]["id"], "series-cleaner@1.0.0");
    let (ok, stdout, stderr) = klf_run(&["fn", "info", "series-cleaner", "--data", &d2]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("YANKED") && stdout.contains("drops negative numbers"),
        "{stdout}"
    );

    // The deployed dependent still reaches the yanked version: the audit names it, on either
    // node, in JSON and in plain text.
    let audit = klf_json(&["fn", "audit", "--json", "--data", &d2]);
    assert_eq!(audit[0]["function"], "moving-average@1.2.0", "{audit}");
    assert_eq!(audit[0]["resolves_to"], "series-cleaner@1.0.0", "{audit}");
    assert_eq!(audit[0]["reason"], "drops negative numbers", "{audit}");
    assert_eq!(audit[0]["replacement"], Value::Null, "{audit}");
    let (ok, stdout, stderr) = klf_run(&["fn", "audit", "--data", &d1]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("moving-average@1.2.0 -> series-cleaner@1.0.0"),
        "{stdout}"
    );

    // A new version of the dependent is refused: its only match is yanked, and the reason is
    // given. Validation without deploying says the same.
    let next = changed(
        mesh.dir.path(),
        "moving-average",
        "klf.toml",
        "version = \"1.2.0\"",
        "version = \"1.3.0\"",
    );
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &next, "--data", &d2]);
    assert!(
        !ok && stderr.contains(
            "moving-average@1.3.0 needs series-cleaner ^1, but every matching version is yanked: 1.0.0 (drops negative numbers)"
        ),
        "{stderr}"
    );

    // A fixed release of the dependency: new deploys resolve to it, and the audit names it as
    // the way out until it serves.
    let fixed = changed(
        mesh.dir.path(),
        "series-cleaner",
        "klf.toml",
        "version = \"1.0.0\"",
        "version = \"1.0.1\"",
    );
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &fixed, "--data", &d1]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &next, "--data", &d1]);
    assert!(ok, "{stderr}");
    let audit = klf_json(&["fn", "audit", "--json", "--data", &d1]);
    assert_eq!(audit, serde_json::json!([]), "{audit}");
}

#[test]
fn static_analysis_refuses_a_deploy_with_the_rule_and_location_and_reports_warnings() {
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let d1 = mesh.nodes[0].data.to_string_lossy().into_owned();
    let evil = changed(
        mesh.dir.path(),
        "hello",
        "main.js",
        "  async execute(input) {\n",
        "  async execute(input) {\n    eval(\"1\");\n",
    );
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &evil, "--data", &d1]);
    assert!(
        !ok && stderr.contains("static analysis") && stderr.contains("main.js:5:5: error[eval]"),
        "{stderr}"
    );
    let looping = changed(
        mesh.dir.path(),
        "hello",
        "main.js",
        "  async execute(input) {\n",
        "  async execute(input) {\n    if (input.spin) { while (true) {} }\n",
    );
    let (ok, stdout, stderr) = klf_run(&["fn", "deploy", &looping, "--data", &d1]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("warning[infinite-loop]"), "{stdout}");
}

#[test]
fn a_function_over_its_latency_budget_fails_validation_with_the_measured_p99() {
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let d1 = mesh.nodes[0].data.to_string_lossy().into_owned();
    // Every call busy-loops for 30 ms.
    let slow = changed(
        mesh.dir.path(),
        "hello",
        "main.js",
        "  async execute(input) {\n",
        "  async execute(input) {\n    const until = Date.now() + 30;\n    while (Date.now() < until) {}\n",
    );
    let (ok, _, stderr) = klf_run(&[
        "fn",
        "deploy",
        &slow,
        "--latency-budget-ms",
        "5",
        "--perf-runs",
        "10",
        "--data",
        &d1,
    ]);
    assert!(!ok, "{stderr}");
    let p99 = stderr
        .split("p99 latency ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse::<f64>().ok());
    assert!(
        p99.is_some_and(|ms| ms >= 30.0) && stderr.contains("over the latency budget of 5 ms"),
        "{stderr}"
    );
    assert!(stderr.contains("10 run(s) of 1 example(s)"), "{stderr}");
    let (ok, _, stderr) = klf_run(&["fn", "info", "hello", "--data", &d1]);
    assert!(
        !ok && stderr.contains("no function named hello"),
        "{stderr}"
    );

    // With --perf warn it deploys, says why, and the figures stay with the release.
    let deployed = klf_json(&[
        "fn",
        "deploy",
        &slow,
        "--latency-budget-ms",
        "5",
        "--perf-runs",
        "10",
        "--perf",
        "warn",
        "--data",
        &d1,
        "--json",
    ]);
    assert!(
        deployed["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("performance: p99 latency")),
        "{deployed}"
    );
    let info = klf_json(&["fn", "info", "hello", "--json", "--data", &d1]);
    let perf = &info["perf"];
    assert_eq!(perf["runs"], 10, "{info}");
    assert!(perf["p99_ms"].as_f64().is_some_and(|p| p >= 30.0), "{info}");
    assert_eq!(perf["latency_budget_ms"], 5, "{info}");
    let steps: Vec<u64> = perf["load"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["in_flight"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(steps, [1, 8, 32], "{info}");
    assert!(
        perf["calls_per_sec"].as_f64().is_some_and(|c| c > 0.0),
        "{info}"
    );
    let (ok, stdout, stderr) = klf_run(&["fn", "info", "hello", "--data", &d1]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("performance") && stdout.contains("over budget: p99 latency"),
        "{stdout}"
    );
}

/// The Chef's deployment manager calls `Node::validate_package` and then `Node::publish`: both
/// refuse a dependency whose only match is yanked, with the reason, on every node of the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chefs_deploy_path_refuses_a_dependency_whose_only_match_is_yanked() {
    use klf_actors::node::validator::PerfOptions;
    use klf_tests::{InProcessMesh, example_package, wait_until};

    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(10))
            .await
    );
    let (n0, n1) = (&mesh.nodes[0], &mesh.nodes[1]);
    n0.publish(example_package("series-cleaner"), 1, "admin")
        .await
        .expect("series-cleaner");
    n0.yank(
        "series-cleaner",
        semver::Version::new(1, 0, 0),
        "drops negative numbers",
        "admin",
    )
    .await
    .expect("yank");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            n1.catalog()
                .yank("series-cleaner", &semver::Version::new(1, 0, 0))
                .is_some()
        })
        .await,
        "the yank reaches the other node"
    );
    let reason = "moving-average@1.2.0 needs series-cleaner ^1, but every matching version is \
                  yanked: 1.0.0 (drops negative numbers)";
    let refused = n1
        .validate_package(&example_package("moving-average"), PerfOptions::default())
        .await
        .expect_err("validation refuses");
    assert!(refused.to_string().contains(reason), "{refused}");
    let refused = n1
        .publish(example_package("moving-average"), 1, "chef")
        .await
        .expect_err("publish refuses");
    assert!(refused.to_string().contains(reason), "{refused}");
    assert!(n1.catalog().versions("moving-average").is_empty());
    mesh.shutdown().await;
}
