//! `klf trace` against real `klf` processes: a call that crosses nodes is one trace, whose spans
//! two nodes recorded in their rings; `klf fn invoke --trace` names it, `klf trace ID` gathers it
//! over KLF into a waterfall, and `klf trace --recent` lists and filters recent traces.

use std::process::Command;
use std::time::Duration;

use klf_tests::example_arg;
use klf_tests::processes::{ProcessMesh, klf_bin, klf_json, klf_run};

/// `klf fn invoke --trace`: the output and the trace id it printed on stderr.
fn invoke_traced(target: &str, input: &str, data: &str) -> (bool, String, Option<String>) {
    let out = Command::new(klf_bin())
        .args([
            "fn", "invoke", target, "--input", input, "--trace", "--data", data,
        ])
        .output()
        .expect("klf runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let trace = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace "))
        .map(str::to_string);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        trace,
    )
}

#[test]
fn a_call_across_nodes_is_one_trace_that_klf_trace_gathers_from_every_member() {
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let token = mesh.nodes[0].token("10m").expect("token");
    mesh.join("n2", &token).expect("n2");
    let d1 = mesh.nodes[0].data.to_string_lossy().into_owned();
    let d2 = mesh.nodes[1].data.to_string_lossy().into_owned();

    // `moving-average` runs on n1 only and calls `series-cleaner`, which runs on n2 only: pinned by
    // one replica each and the rendezvous ranking, so try both placements until they differ.
    for name in ["series-cleaner", "moving-average"] {
        let (ok, _, stderr) = klf_run(&["fn", "deploy", &example_arg(name), "--data", &d1]);
        assert!(ok, "{stderr}");
    }
    let input = r#"{"xs":[1,2,3,4,5,6],"window":2}"#;
    // Called from each node: with one replica each, at least one of the two calls crosses nodes
    // (whichever node hosts what), and that one's spans come from both nodes' rings.
    let mut crossing = None;
    for (asked, data) in [("n1", &d1), ("n2", &d2)] {
        let mut traced = None;
        assert!(
            mesh.wait(Duration::from_secs(20), |_| {
                let (ok, stdout, trace) = invoke_traced("moving-average", input, data);
                if ok {
                    traced = trace.map(|t| (t, stdout));
                }
                traced.is_some()
            }),
            "moving-average should answer from {asked}\n{}",
            mesh.logs()
        );
        let (trace_id, output) = traced.expect("traced");
        assert!(output.contains("avg"), "{output}");
        assert_eq!(trace_id.len(), 32, "{trace_id}");
        let view = klf_json(&["trace", &trace_id, "--json", "--data", &d1]);
        let spans: Vec<(String, String, String)> = view["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["span"]["name"].as_str().unwrap_or("").to_string(),
                    r["span"]["function"].as_str().unwrap_or("").to_string(),
                    r["span"]["node"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert!(
            spans
                .iter()
                .any(|(name, function, node)| name == "klf.invoke"
                    && function == "moving-average"
                    && node == asked),
            "the API call's own span, recorded on {asked}: {spans:?}"
        );
        assert!(
            spans
                .iter()
                .any(|(name, function, _)| name == "klf.invoke" && function == "series-cleaner"),
            "moving-average's ctx.call is a span of the same trace: {spans:?}"
        );
        let nodes: std::collections::BTreeSet<String> = spans.iter().map(|s| s.2.clone()).collect();
        if nodes.len() == 2 {
            crossing = Some((trace_id, view));
        }
    }
    let (trace_id, view) = crossing.expect("one of the calls crossed nodes");
    let rows = view["rows"].as_array().expect("rows");
    assert_eq!(rows[0]["depth"], 0, "{view}");
    assert_eq!(rows[0]["offset_us"], 0, "{view}");
    assert!(
        rows.iter().any(|r| r["depth"] == 1),
        "the ctx.call is a child: {view}"
    );
    assert!(
        rows.iter()
            .all(|r| r["span"]["trace_id"] == trace_id.as_str()),
        "{view}"
    );
    // The text waterfall names the nodes and the functions, children indented.
    let (ok, text, stderr) = klf_run(&["trace", &trace_id, "--data", &d2]);
    assert!(ok, "{stderr}");
    assert!(text.contains("klf.invoke moving-average"), "{text}");
    assert!(
        text.contains("  klf.") && text.contains("n1") && text.contains("n2"),
        "{text}"
    );

    // A failed call is a trace with an error, which --errors picks out.
    let (ok, _, failed) = invoke_traced("ghost", "{}", &d1);
    assert!(!ok);
    let failed = failed.expect("an error answer carries its trace id too");
    let recent = klf_json(&["trace", "--recent", "--errors", "--json", "--data", &d2]);
    let ids: Vec<&str> = recent["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .filter_map(|t| t["trace_id"].as_str())
        .collect();
    assert!(ids.contains(&failed.as_str()), "{recent}");
    assert!(!ids.contains(&trace_id.as_str()), "{recent}");
    let by_function = klf_json(&[
        "trace",
        "--recent",
        "--function",
        "series-cleaner",
        "--limit",
        "1000",
        "--json",
        "--data",
        &d2,
    ]);
    // Our calls, and the deploy's own (the validator runs moving-average's examples against the
    // deployed series-cleaner), but not the failed call to `ghost`.
    let listed = by_function["traces"].as_array().expect("traces");
    assert!(
        listed.iter().all(|t| t["trace_id"] != failed.as_str()),
        "{by_function}"
    );
    assert!(
        listed.iter().any(|t| t["trace_id"] == trace_id.as_str()),
        "{by_function}"
    );
    assert!(listed.iter().all(|t| t["errors"] == 0), "{by_function}");

    // Refusals: not a trace id, and a trace nobody keeps.
    let (ok, _, stderr) = klf_run(&["trace", "not-hex", "--data", &d1]);
    assert!(!ok && stderr.contains("32 hex digits"), "{stderr}");
    let (ok, _, stderr) = klf_run(&["trace", &"ab".repeat(16), "--data", &d1]);
    assert!(!ok && stderr.contains("no member keeps a span"), "{stderr}");
}

#[test]
fn a_node_started_with_no_trace_buffer_keeps_no_spans_and_says_so() {
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init_with("n1", &["--trace-buffer", "0"]).expect("n1");
    let d1 = mesh.nodes[0].data.to_string_lossy().into_owned();
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &example_arg("hello"), "--data", &d1]);
    assert!(ok, "{stderr}");
    let mut trace = None;
    assert!(mesh.wait(Duration::from_secs(20), |_| {
        let (ok, _, t) = invoke_traced("hello", r#"{"name":"x"}"#, &d1);
        trace = t;
        ok
    }));
    let trace = trace.expect("the trace id is handed back even when nothing records it");
    let (ok, _, stderr) = klf_run(&["trace", &trace, "--data", &d1]);
    assert!(!ok && stderr.contains("--trace-buffer 0"), "{stderr}");
}
