//! The Chef on real in-process meshes: requests become deployed functions that pass their
//! generated tests and answer hand-written inputs from another node; a request that fits no recipe
//! is answered honestly; agents placed on another node talk over KLF; the validator refuses `eval`
//! and foreign imports with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use klf_actors::chef::messages::{AgentType, GeneratedCode};
use klf_actors::chef::providers::offline::Offline;
use klf_actors::chef::providers::{Provider, render_requirement};
use klf_actors::chef::{Chef, ChefOptions, ChefRun, RunOutcome, checks};
use klf_actors::router::InvokeRequest;
use klf_tests::{InProcessMesh, wait_until};
use serde_json::{Value, json};

/// The stages of a deploying run, in order.
const STAGES: [&str; 7] = [
    "interpret",
    "write tests",
    "generate",
    "validate",
    "test",
    "deploy",
    "monitor",
];

async fn mesh_with_chefs(n: usize) -> (InProcessMesh, Vec<Arc<Chef>>) {
    let mesh = InProcessMesh::start(n).await.expect("mesh");
    let all: Vec<usize> = (0..n).collect();
    assert!(mesh.wait_all_alive(&all, n, Duration::from_secs(10)).await);
    let mut chefs = Vec::new();
    for kitchen in &mesh.kitchens {
        let providers: Vec<Arc<dyn Provider>> = vec![Arc::new(Offline)];
        chefs.push(Chef::start(kitchen.clone(), providers).await.expect("chef"));
    }
    (mesh, chefs)
}

fn deploy(replicas: u32) -> ChefOptions {
    ChefOptions {
        deploy: true,
        replicas,
        ..ChefOptions::default()
    }
}

async fn invoke(mesh: &InProcessMesh, node: usize, function: &str, input: Value) -> Value {
    assert!(
        wait_until(Duration::from_secs(5), || async {
            mesh.nodes[node].catalog().deployment(function).is_some()
        })
        .await,
        "{function} never reached node {node}"
    );
    let outcome = mesh.nodes[node]
        .invoke(InvokeRequest::new(function, input, Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("{function}: {e}"));
    outcome.output
}

fn deployed(run: &ChefRun) -> (String, String) {
    match &run.outcome {
        RunOutcome::Deployed {
            function, version, ..
        } => (function.clone(), version.clone()),
        other => panic!("not deployed: {other:?}\nstages: {:#?}", run.stages),
    }
}

fn series(symbol: &str, closes: &[f64]) -> Vec<Value> {
    closes
        .iter()
        .enumerate()
        .map(|(i, close)| {
            json!({ "date": format!("2025-01-{:02}", i + 1), "symbol": symbol, "close": close, "volume": 1000 })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_market_analysis_request_becomes_a_deployed_function_that_answers_elsewhere() {
    let (mesh, chefs) = mesh_with_chefs(3).await;
    let run = chefs[0]
        .run(
            "Analyze market data and find opportunities",
            &deploy(2),
            None,
        )
        .await
        .expect("run");
    let (function, version) = deployed(&run);
    assert_eq!(function, "market-analysis");
    let requirement = run.requirement.as_ref().expect("requirement");
    let classes: Vec<&str> = requirement
        .steps
        .iter()
        .map(|s| s.base_class.as_str())
        .collect();
    assert_eq!(
        classes,
        ["BaseDataProcessor", "BaseModelProcessor", "BasePredictor"]
    );
    let tests = run.tests.as_ref().expect("tests ran");
    assert!(tests.ok() && tests.passed >= 2, "{tests:?}");
    assert!(run.stages.iter().all(|s| s.ok), "{:#?}", run.stages);
    let stages: Vec<&str> = run.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, STAGES);
    assert!(
        std::path::Path::new(run.code_dir.as_deref().expect("code dir"))
            .join("main.js")
            .is_file()
    );
    assert_eq!(version, "1.0.0");

    // Hand-written input, from the third node: a steady riser beats a steady faller.
    let mut input = series("UPUP", &[10.0, 10.4, 10.9, 11.3, 11.8, 12.4, 12.9, 13.5]);
    input.extend(series(
        "DOWN",
        &[20.0, 19.5, 18.9, 18.2, 17.8, 17.1, 16.5, 16.0],
    ));
    let output = invoke(&mesh, 2, "market-analysis", json!({ "series": input })).await;
    assert_eq!(output["analyzed"], 2, "{output}");
    let ranked = output["opportunities"].as_array().expect("opportunities");
    assert_eq!(ranked[0]["symbol"], "UPUP", "{output}");
    assert_eq!(ranked[1]["symbol"], "DOWN", "{output}");
    assert!(ranked[0]["score"].as_f64() > ranked[1]["score"].as_f64());
    assert_eq!(ranked[1]["signal"], "avoid", "{output}");
    assert!(
        ranked[0]["forecast_next"]
            .as_f64()
            .is_some_and(|f| f > 13.5),
        "{output}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differently_worded_requests_build_other_recipes_with_parameters_from_the_request() {
    let (mesh, chefs) = mesh_with_chefs(2).await;

    let run = chefs[0]
        .run(
            "turn CSV text into JSON objects, call it csv-import",
            &deploy(1),
            None,
        )
        .await
        .expect("run");
    let (function, _) = deployed(&run);
    assert_eq!(function, "csv-import");
    let output = invoke(
        &mesh,
        1,
        "csv-import",
        json!({ "csv": "name,age\n\"Ada, Countess\",36\nAlan,41\n" }),
    )
    .await;
    let text = output.to_string();
    assert!(
        text.contains("Ada, Countess") && text.contains("Alan"),
        "{output}"
    );

    let run = chefs[1]
        .run(
            "flag spikes and outliers in my latency metrics",
            &deploy(1),
            None,
        )
        .await
        .expect("run");
    let (function, _) = deployed(&run);
    assert_eq!(function, "metric-anomalies");
    let mut values = vec![100.0; 30];
    values[20] = 900.0;
    let requirement = run.requirement.expect("requirement");
    let example = {
        let library = mesh.kitchens[0].ingredients();
        let (_, recipe) = library.recipe(&requirement.recipe).expect("recipe");
        recipe.examples[0].input.clone()
    };
    // Same shape as the recipe's own example, other numbers.
    let mut input = example.clone();
    let field = example
        .as_object()
        .and_then(|o| o.iter().find(|(_, v)| v.is_array()).map(|(k, _)| k.clone()))
        .expect("an array field");
    let item = example[&field][0].clone();
    input[&field] = Value::Array(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match &item {
                Value::Object(map) => {
                    let mut point = map.clone();
                    for (key, old) in map {
                        if old.is_number() && key != "t" && key != "ts" && key != "timestamp" {
                            point.insert(key.clone(), json!(v));
                        } else if old.is_number() {
                            point.insert(key.clone(), json!(i));
                        }
                    }
                    Value::Object(point)
                }
                _ => json!(v),
            })
            .collect(),
    );
    let output = invoke(&mesh, 0, "metric-anomalies", input).await;
    assert!(
        output.to_string().contains("900"),
        "the spike is reported: {output}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fits_no_recipe_is_answered_honestly_and_nothing_is_deployed() {
    let (mesh, chefs) = mesh_with_chefs(1).await;
    let before = mesh.nodes[0].catalog().releases().count();
    let run = chefs[0]
        .run("write a poem about the sea", &deploy(1), None)
        .await
        .expect("run");
    match &run.outcome {
        RunOutcome::NoMatch(no) => {
            assert!(!no.reason.is_empty());
        }
        other => panic!("expected no match, got {other:?}"),
    }
    assert_eq!(run.stages.len(), 1);
    assert_eq!(mesh.nodes[0].catalog().releases().count(), before);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_another_node_are_reached_over_klf() {
    let (mesh, chefs) = mesh_with_chefs(2).await;
    let other = mesh.nodes[1].settings().name.clone();
    let options = ChefOptions {
        placement: BTreeMap::from([
            (AgentType::CodeValidator, other.clone()),
            (AgentType::TestGenerator, other.clone()),
        ]),
        ..deploy(1)
    };
    let run = chefs[0]
        .run("encrypt the sensitive fields of a record", &options, None)
        .await
        .expect("run");
    // Built and tested, even if deploying needs node secrets: the agents' work is what matters here.
    assert!(
        run.tests.as_ref().is_some_and(|t| t.ok()),
        "{:#?}",
        run.stages
    );
    for stage in &run.stages {
        let remote = ["validate", "write tests", "test"].contains(&stage.stage.as_str());
        let expected = if remote {
            other.as_str()
        } else {
            mesh.nodes[0].settings().name.as_str()
        };
        assert_eq!(stage.node, expected, "{stage:?}");
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_refuses_eval_and_foreign_imports_with_the_reason() {
    let (mesh, _chefs) = mesh_with_chefs(1).await;
    let library = mesh.kitchens[0].ingredients().clone();
    let requirement = match klf_actors::chef::providers::offline::interpret(
        "turn CSV text into JSON objects",
        &library,
    ) {
        klf_actors::chef::providers::Interpretation::Requirement(r) => *r,
        other => panic!("{other:?}"),
    };
    let good = render_requirement(&requirement, 0, &library).expect("render");
    let catalog = mesh.nodes[0].catalog();
    assert!(checks::validate(&good, &catalog).await.ok);

    let tamper = |code: &GeneratedCode, line: &str| {
        let mut code = code.clone();
        let main = code.files.get("main.js").cloned().unwrap_or_default();
        code.files
            .insert("main.js".into(), format!("{line}\n{main}"));
        code
    };
    for (line, reason) in [
        ("const sneaky = () => eval(\"1 + 1\");", "eval"),
        ("import fs from \"fs\";", "fs"),
        ("const F = Function;", "Function"),
    ] {
        let verdict = checks::validate(&tamper(&good, line), &catalog).await;
        assert!(!verdict.ok, "{line}");
        let problems: Vec<String> = verdict.problems.iter().map(|p| p.message.clone()).collect();
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.check == "static" && p.message.contains(reason) && p.line == Some(1)),
            "{line}: {problems:?}"
        );
    }
    mesh.shutdown().await;
}

/// `klf chef` against a real `klf up` process: progress on stdout, the deployed name@version,
/// the package's schemas and examples in `klf fn info --json`, and an honest refusal.
#[test]
fn klf_chef_builds_deploys_and_refuses_through_the_cli() {
    use klf_tests::processes::{ProcessMesh, klf};
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let data = mesh.nodes[0].data.to_string_lossy().into_owned();

    // The webhook recipe needs a function to send events to: without one the Chef asks.
    let out = klf(&[
        "chef",
        "route incoming webhooks to the right handler",
        "--data",
        &data,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("needs what the request does not say: `sink`"),
        "{stdout}"
    );
    let echo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/echo");
    let out = klf(&["fn", "deploy", &echo.to_string_lossy(), "--data", &data]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = klf(&[
        "chef",
        "route incoming webhooks to the echo function",
        "--deploy",
        "--data",
        &data,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The stages up to the deploy.
    for stage in &STAGES[..6] {
        assert!(stdout.contains(&format!("✓ {stage}")), "{stage}: {stdout}");
    }
    assert!(
        stdout.contains("deployed:   webhook-router@1.0.0"),
        "{stdout}"
    );
    assert!(stdout.contains("code:       "), "{stdout}");

    let out = klf(&["fn", "info", "webhook-router", "--json", "--data", &data]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(info["input_schema"]["type"], "object", "{info}");
    assert!(info["output_schema"].is_object(), "{info}");
    assert!(
        info["examples"].as_object().is_some_and(|e| !e.is_empty()),
        "{info}"
    );

    let out = klf(&["chef", "book me a flight to Lisbon", "--data", &data]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("no recipe fits"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was built"));

    let out = klf(&["chef", "turn CSV into JSON", "--json", "--data", &data]);
    let run: Value = serde_json::from_slice(&out.stdout).expect("run JSON");
    assert_eq!(run["outcome"]["status"], "built", "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_needing_a_secret_the_mesh_lacks_is_not_published_unless_asked_to_create_it() {
    let (mesh, chefs) = mesh_with_chefs(2).await;
    let request = "check api tokens: authenticate and authorize requests";
    let run = chefs[0].run(request, &deploy(1), None).await.expect("run");
    let RunOutcome::Failed { reasons } = &run.outcome else {
        panic!("published without its secret: {:?}", run.outcome);
    };
    let reason = reasons.join("; ");
    assert!(
        reason.contains("needs secrets the mesh does not hold"),
        "{reason}"
    );
    assert!(
        reason.contains("`api-tokens` is missing on node0, node1"),
        "which secret, on which nodes: {reason}"
    );
    assert!(
        reason.contains("klf secret set api-tokens --from-file"),
        "{reason}"
    );
    assert!(reason.contains("--create-secrets"), "{reason}");
    assert!(
        mesh.nodes[0].catalog().versions("token-check").is_empty(),
        "nothing is published"
    );

    let create = ChefOptions {
        create_secrets: true,
        ..deploy(1)
    };
    let run = chefs[0].run(request, &create, None).await.expect("run");
    let (function, _) = deployed(&run);
    // The key is on every node, 0600, and the function answers from either of them.
    for i in 0..2 {
        let path = mesh.data_dir(i).secrets_dir().join("api-tokens");
        let key = std::fs::read_to_string(&path).expect("the generated secret");
        assert_eq!(key.len(), 64, "32 random bytes, hex");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
    }
    // A deploy returns once its hosts serve it; node1 learns of it by replication.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            mesh.nodes[1].catalog().deployment(&function).is_some()
        })
        .await,
        "{function} never reached node1"
    );
    let answer = mesh.nodes[1]
        .invoke(InvokeRequest::new(
            &function,
            json!({"headers": {"authorization": "Bearer nope"}, "action": "read", "resource": "x"}),
            Duration::from_secs(10),
        ))
        .await;
    match answer {
        Ok(_) => {}
        Err(error) => assert!(
            error.answered_by_function(),
            "the function itself answers (an unknown token is its own error): {error}"
        ),
    }
    mesh.shutdown().await;
}
