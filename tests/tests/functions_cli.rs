//! `klf fn deploy | ls | info | deps | rm` against real `klf` processes, with the example packages.

use std::time::Duration;

use klf_tests::example_arg;
use klf_tests::processes::{ProcessMesh, klf_json, klf_run};
use serde_json::Value;

#[test]
fn functions_deploy_replicate_and_are_inspected_and_removed_through_the_cli() {
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let token = mesh.nodes[0].token("10m").expect("token");
    mesh.join("n2", &token).expect("n2");
    let d1 = mesh.nodes[0].data.to_string_lossy().into_owned();
    let d2 = mesh.nodes[1].data.to_string_lossy().into_owned();

    // A dependency that is not published yet is named.
    let (ok, _, stderr) = klf_run(&[
        "fn",
        "deploy",
        &example_arg("moving-average"),
        "--data",
        &d1,
    ]);
    assert!(
        !ok && stderr.contains("needs series-cleaner ^1"),
        "{stderr}"
    );

    let deployed = klf_json(&[
        "fn",
        "deploy",
        &example_arg("series-cleaner"),
        "--replicas",
        "2",
        "--data",
        &d1,
        "--json",
    ]);
    assert_eq!(deployed["id"], "series-cleaner@1.0.0");
    assert_eq!(deployed["replicas"], 2);
    let (ok, stdout, stderr) = klf_run(&[
        "fn",
        "deploy",
        &example_arg("moving-average"),
        "--data",
        &d1,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("deployed moving-average@1.2.0"), "{stdout}");

    // The other node lists both within 3 s.
    assert!(
        mesh.wait(Duration::from_secs(3), |_| {
            let (ok, stdout, _) = klf_run(&["fn", "ls", "--json", "--data", &d2]);
            ok && serde_json::from_str::<Value>(&stdout)
                .ok()
                .and_then(|v| v.as_array().map(|a| a.len()))
                == Some(2)
        }),
        "n2 should list both functions\n{}",
        mesh.logs()
    );
    let by_type = klf_json(&[
        "fn",
        "ls",
        "--type",
        "data-processor",
        "--json",
        "--data",
        &d2,
    ]);
    assert_eq!(by_type.as_array().map(Vec::len), Some(1));
    assert_eq!(by_type[0]["name"], "moving-average");

    // Info from the node that never stored the artifact: it fetches and verifies it for the examples.
    let info = klf_json(&["fn", "info", "moving-average@^1", "--json", "--data", &d2]);
    assert_eq!(info["id"], "moving-average@1.2.0");
    assert_eq!(info["dependencies"]["series-cleaner"], "^1");
    assert_eq!(info["examples"]["rising"]["xs"][5], 6, "{info}");
    let deps = klf_json(&["fn", "deps", "moving-average", "--json", "--data", &d2]);
    assert_eq!(deps[0]["id"], "series-cleaner@1.0.0");

    // Invocation from the node that did not deploy: the output JSON alone on stdout.
    let (ok, stdout, stderr) = klf_run(&[
        "fn",
        "invoke",
        "moving-average",
        "--input",
        r#"{"xs":[1,2,3,4,5,6]}"#,
        "--data",
        &d2,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).expect("json"),
        serde_json::json!({"avg": 5, "n": 3})
    );
    let input_file = mesh.dir.path().join("input.json");
    std::fs::write(&input_file, r#"{"xs":[10, "junk", 20]}"#).expect("write");
    let out = klf_json(&[
        "fn",
        "invoke",
        "moving-average@^1",
        "--input-file",
        &input_file.to_string_lossy(),
        "--data",
        &d1,
    ]);
    assert_eq!(out, serde_json::json!({"avg": 15, "n": 2}));
    let (ok, stdout, stderr) = klf_run(&[
        "fn",
        "invoke",
        "moving-average",
        "--input",
        "{not json",
        "--data",
        &d2,
    ]);
    assert!(
        !ok && stdout.is_empty() && stderr.contains("not JSON"),
        "{stderr}"
    );
    let (ok, _, stderr) = klf_run(&["fn", "invoke", "ghost", "--input", "{}", "--data", &d2]);
    assert!(
        !ok && stderr.contains("no function named ghost"),
        "{stderr}"
    );

    // Clear refusals.
    let (ok, _, stderr) = klf_run(&["fn", "info", "moving-average@^2", "--data", &d2]);
    assert!(
        !ok && stderr.contains("no version of moving-average matches ^2"),
        "{stderr}"
    );
    let (ok, _, stderr) = klf_run(&["fn", "info", "ghost", "--data", &d2]);
    assert!(
        !ok && stderr.contains("no function named ghost"),
        "{stderr}"
    );
    let changed = mesh.dir.path().join("changed");
    copy_dir(&klf_tests::example_dir("series-cleaner"), &changed);
    std::fs::write(
        changed.join("main.js"),
        "import { BaseFunction } from \"klf:base\";\nexport default class X extends BaseFunction { execute(i) { return i; } }\n",
    )
    .expect("write");
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &changed.to_string_lossy(), "--data", &d1]);
    assert!(
        !ok && stderr.contains("already published with different content"),
        "{stderr}"
    );
    let manifest = changed.join("klf.toml");
    let text = std::fs::read_to_string(&manifest).expect("read");
    std::fs::write(
        &manifest,
        text.replace("version = \"1.0.0\"", "version = \"one\""),
    )
    .expect("write");
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &changed.to_string_lossy(), "--data", &d1]);
    assert!(!ok && stderr.contains("field `version`"), "{stderr}");

    // Removal replicates too.
    let (ok, _, stderr) = klf_run(&["fn", "rm", "moving-average", "--data", &d1]);
    assert!(ok, "{stderr}");
    assert!(
        mesh.wait(Duration::from_secs(5), |_| {
            let (_, stdout, _) = klf_run(&["fn", "ls", "--json", "--data", &d2]);
            !stdout.contains("moving-average")
        }),
        "the removal should reach n2\n{}",
        mesh.logs()
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
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
