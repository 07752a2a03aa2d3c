//! Cost, value and ROI on real nodes: a Chef run recorded in the ledger, a function with a declared
//! value per call invoked N times and counted by the router's statistics, `Node::roi` with the
//! rates of `roi.toml`, the ledger surviving a restart, a bad `roi.toml` refused by name; and
//! `klf roi` against a `klf` process.

use std::time::Duration;

use klf_actors::ledger::{Amount, Basis, EventKind, RunOutcome, RunRecord, StageRecord};
use klf_actors::router::InvokeRequest;
use klf_tests::processes::{ProcessMesh, klf_run};
use klf_tests::{InProcessMesh, wait_until, write_package};
use serde_json::{Value, json};

const DOUBLER: &str = r#"
import { BaseFunction } from "klf:base";
export default class Doubler extends BaseFunction {
  async execute(input) { return { y: input.x * 2 }; }
}
"#;

/// Prices that make the expected ROI exact: CPU, memory and storage are free, so only the
/// recorded run and events cost anything.
const RATES: &str = "[roi]
hourly_rate_usd = 100
cpu_second_usd = 0
gb_month_usd = 0
memory_gb_month_usd = 0
maintenance_event_hours = 1
";

fn chef_run() -> RunRecord {
    RunRecord {
        run_id: "run-1".into(),
        function: Some("doubler".into()),
        version: Some("1.0.0".into()),
        request: "double a number".into(),
        provider: "offline".into(),
        outcome: RunOutcome::Deployed,
        started_unix_ms: 1_700_000_000_000,
        stages: ["interpret", "generate", "validate", "test", "deploy"]
            .iter()
            .map(|stage| StageRecord {
                stage: stage.to_string(),
                ms: 720,
                ok: true,
                note: String::new(),
            })
            .collect(),
        model_tokens_in: 1000,
        model_tokens_out: 100,
        model_cost: Amount::measured(0.02, "1000 + 100 tokens × price"),
        compute_us: 40_000,
        repairs: 1,
        tests_passed: 5,
        tests_total: 5,
        baseline_hours: Amount::declared(2.0, "recipe doubler: 2 h"),
    }
}

fn line(side: &klf_actors::ledger::Breakdown, key: &str) -> (f64, Basis) {
    side.line(key)
        .map(|l| (l.amount.value, l.amount.basis))
        .unwrap_or_else(|| panic!("no line {key}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_and_n_invocations_give_the_expected_roi_and_survive_a_restart() {
    let mut mesh = InProcessMesh::start(1).await.expect("mesh");
    // The node reads roi.toml when it starts.
    let data = mesh.data_dir(0);
    std::fs::write(data.root().join("roi.toml"), RATES).expect("roi.toml");
    mesh.nodes[0].shutdown().await;
    mesh.restart(0).await.expect("restart with rates");
    let kitchen = &mesh.kitchens[0];
    let node = kitchen.node();
    assert_eq!(kitchen.rates().hourly_rate_usd.value, 100.0);
    assert_eq!(kitchen.rates().maintenance_event_hours.value, 1.0);

    // What the Chef records: one run that took 3.6 s with one repair round.
    kitchen
        .ledger()
        .record_run(&chef_run())
        .expect("record run");

    let package = write_package(
        mesh.dir.path(),
        "doubler",
        "1.0.0",
        "[value]\nper_call = 0.25",
        DOUBLER,
    );
    node.publish(package, 1, "admin").await.expect("deploy");
    // A rollback (here to the only version) is a maintenance event in the ledger.
    kitchen
        .rollback("doubler", semver::Version::new(1, 0, 0))
        .await
        .expect("rollback");
    let events = kitchen.ledger().events(Some("doubler")).expect("events");
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind, e.version.as_deref()))
            .collect::<Vec<_>>(),
        [(EventKind::Rollback, Some("1.0.0"))]
    );
    // The first successful call is the first of the N.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            node.invoke(InvokeRequest::new(
                "doubler",
                json!({"x": 0}),
                Duration::from_secs(5),
            ))
            .await
            .is_ok()
        })
        .await,
        "doubler should serve within 5 s"
    );
    const N: u64 = 7;
    for x in 1..N {
        let outcome = node
            .invoke(InvokeRequest::new(
                "doubler",
                json!({"x": x}),
                Duration::from_secs(5),
            ))
            .await
            .expect("invoke");
        assert_eq!(outcome.output, json!({"y": x * 2}));
    }

    let roi = kitchen.roi(Some("doubler")).await.expect("roi");
    assert_eq!(roi.function.as_deref(), Some("doubler"));
    assert_eq!((roi.runs, roi.events), (1, 1));
    // Cost: 3.6 s = 0.001 h × $100 = $0.10; tokens $0.02; (1 repair round + 1 rollback) × 1 h × $100.
    assert!(close(line(&roi.cost, "development").0, 0.1));
    assert_eq!(line(&roi.cost, "model"), (0.02, Basis::Measured));
    assert!(close(line(&roi.cost, "maintenance").0, 200.0));
    assert_eq!(line(&roi.cost, "compute_cpu").0, 0.0);
    assert!(close(roi.cost.total, 200.12));
    // Value: (2 h − 0.001 h) × $100 = $199.90, declared; N × $0.25 from the manifest.
    assert_eq!(line(&roi.value, "time_saved").1, Basis::Declared);
    assert!(close(line(&roi.value, "time_saved").0, 199.9));
    let invocations = roi.value.line("invocations").expect("invocations line");
    assert!(close(invocations.amount.value, N as f64 * 0.25));
    let served = invocations
        .quantities
        .iter()
        .find(|q| q.name == "calls_served")
        .expect("calls_served");
    assert_eq!((served.value, served.basis), (N as f64, Basis::Measured));
    let per_call = invocations
        .quantities
        .iter()
        .find(|q| q.name == "value_per_call")
        .expect("value_per_call");
    assert_eq!((per_call.value, per_call.basis), (0.25, Basis::Declared));
    let expected = (199.9 + 1.75 - 200.12) / 200.12;
    assert!(
        roi.roi.is_some_and(|r| close(r, expected)),
        "{:?} != {expected}",
        roi.roi
    );
    // Quality and scalability, measured by the router.
    let metric = |key: &str| {
        roi.quality
            .iter()
            .find(|m| m.key == key)
            .and_then(|m| m.value)
    };
    assert_eq!(metric("error_rate"), Some(0.0));
    assert_eq!(metric("test_pass_rate"), Some(1.0));
    assert!(
        metric("p99_ms").is_some_and(|p| p > 0.0),
        "{:?}",
        roi.quality
    );
    // The catalog supplies the artifact.
    let storage = roi.cost.line("storage").expect("storage line");
    assert!(storage.quantities[0].value > 0.0, "artifact bytes counted");

    // Mesh scope: the same function, plus a run that matched nothing.
    let mut nothing = chef_run();
    nothing.run_id = "run-0".into();
    nothing.function = None;
    nothing.version = None;
    nothing.outcome = RunOutcome::NoMatch;
    nothing.repairs = 0;
    kitchen
        .ledger()
        .record_run(&nothing)
        .expect("record no-match");
    let mesh_roi = kitchen.roi(None).await.expect("mesh roi");
    assert_eq!(
        (mesh_roi.function, mesh_roi.functions, mesh_roi.runs),
        (None, 1, 2)
    );
    assert!(close(line(&mesh_roi.cost, "development").0, 0.2));
    let unknown = kitchen
        .roi(Some("ghost"))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        unknown
            .as_deref()
            .is_some_and(|m| m.contains("no function named \"ghost\"")),
        "{unknown:?}"
    );

    // Restarted, the node still has its ledger.
    mesh.nodes[0].shutdown().await;
    mesh.restart(0).await.expect("restart");
    let kitchen = &mesh.kitchens[0];
    assert_eq!(
        kitchen.ledger().runs(Some("doubler")).expect("runs"),
        vec![chef_run()]
    );
    assert_eq!(kitchen.ledger().events(None).expect("events").len(), 1);
    let again = kitchen
        .roi(Some("doubler"))
        .await
        .expect("roi after restart");
    assert!(close(again.cost.total, 200.12));
    assert_eq!(again.runs, 1);

    // A bad rate stops the node from starting, naming the file and the field.
    std::fs::write(
        data.root().join("roi.toml"),
        "[roi]\nhourly_rate_usd = \"a lot\"\n",
    )
    .expect("roi.toml");
    mesh.nodes[0].shutdown().await;
    let refused = mesh.restart(0).await.err().map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("roi.toml: field `roi.hourly_rate_usd`")),
        "{refused:?}"
    );
}

#[test]
fn klf_roi_shows_a_function_and_the_mesh_through_the_api() {
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let data = mesh.nodes[0].data.to_string_lossy().into_owned();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/series-cleaner")
        .to_string_lossy()
        .into_owned();
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &example, "--data", &data]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = klf_run(&[
        "fn",
        "invoke",
        "series-cleaner",
        "--input",
        r#"{"xs":[1,"x",2]}"#,
        "--data",
        &data,
    ]);
    assert!(ok, "{stderr}\n{}", mesh.logs());

    let (ok, stdout, stderr) = klf_run(&["roi", "series-cleaner", "--data", &data]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("ROI of function series-cleaner"),
        "{stdout}"
    );
    for expected in [
        "COST (USD)",
        "development time",
        "compute: storage",
        "VALUE (USD)",
        "invocations served",
        "1 successful call(s) of 1 (measured) × $0.0005/call declared in [value] per_call",
        "QUALITY",
        "error rate",
        "default rates (no roi.toml)",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?}:\n{stdout}");
    }

    let (ok, stdout, stderr) = klf_run(&["roi", "--json", "--data", &data]);
    assert!(ok, "{stderr}");
    let mesh_roi: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(mesh_roi["function"], Value::Null);
    assert_eq!(mesh_roi["functions"], 1);
    assert_eq!(mesh_roi["rates"]["hourly_rate_usd"]["source"], "default");
    let value_lines = mesh_roi["value"]["lines"].as_array().expect("lines");
    assert!(
        value_lines
            .iter()
            .any(|l| l["key"] == "invocations" && l["amount"]["basis"] == "declared"),
        "{stdout}"
    );

    let (ok, _, stderr) = klf_run(&["roi", "ghost", "--data", &data]);
    assert!(
        !ok && stderr.contains("404") && stderr.contains("no function named \"ghost\""),
        "{stderr}"
    );
}
