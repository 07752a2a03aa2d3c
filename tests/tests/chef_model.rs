//! The Chef writing functions of its own with a model: a real in-process mesh, the real `openai`
//! provider (`OpenAiCompatible` over HTTP) and a scripted chat-completions server
//! (`klf_tests::model_server`), streaming like a real one.
//!
//! (a) a request no recipe fits becomes a requirement, tests and code, is deployed, and answers
//! its examples from another node; (b) code that fails a held test is repaired in round 1;
//! (c) code using `eval` is refused by static analysis and repaired; (d) a model that never stops
//! is bounded by `max_tokens` and the run fails, saying why, well within its deadline; (e) a 429 is
//! waited out; (f) the code generator is never shown an expected output.

use std::sync::Arc;
use std::time::Duration;

use klf_actors::chef::providers::Provider;
use klf_actors::chef::providers::model::ModelBacked;
use klf_actors::chef::providers::offline::Offline;
use klf_actors::chef::{Chef, ChefOptions, ChefRun, RunOutcome, StageEvent};
use klf_actors::model::{ModelConfig, OpenAiCompatible};
use klf_actors::router::InvokeRequest;
use klf_tests::InProcessMesh;
use klf_tests::model_server::{ModelServer, Scripted};
use serde_json::{Value, json};

/// A request no shipped recipe does.
const REQUEST: &str = "Triple a number: give x, get back tripled";
/// An expected output no prompt could contain by chance: 3 × 1234567.
const SENTINEL: &str = "3703701";

fn recipe_none() -> Scripted {
    Scripted::Content(json!({"recipe": null, "reason": "no recipe multiplies numbers"}).to_string())
}

fn requirement() -> Scripted {
    Scripted::Content(
        json!({
            "name": "triple",
            "type": "math",
            "goal": "Triple a number",
            "description": "Returns three times x.",
            "input_schema": {"type": "object", "required": ["x"], "properties": {"x": {"type": "number"}}},
            "output_schema": {"type": "object", "required": ["tripled"], "properties": {"tripled": {"type": "number"}}},
            "examples": [
                {"name": "big", "input": {"x": 1234567}, "output": {"tripled": 3703701}},
                {"name": "zero", "input": {"x": 0}, "output": {"tripled": 0}},
                {"name": "not a number", "input": {"x": "a"}, "error": "input.x"}
            ],
            "capabilities": [],
            "dependencies": {},
            "limits": {"memory_mb": 16, "timeout_ms": 1000, "latency_budget_ms": 50}
        })
        .to_string(),
    )
}

fn written_tests() -> Scripted {
    Scripted::Content(
        json!({"tests": [
            {"name": "negative", "input": {"x": -2}, "output": {"tripled": -6}},
            {"name": "fraction", "input": {"x": 0.5}, "output": {"tripled": 1.5}}
        ]})
        .to_string(),
    )
}

/// A package whose `execute` computes `expression` (of `input.x`).
fn code(expression: &str) -> Scripted {
    let module = format!(
        "import {{ BaseFunction, KlfInputError }} from \"klf:base\";\n\
         export default class Triple extends BaseFunction {{\n\
         \x20 async execute(input) {{\n\
         \x20   if (typeof input?.x !== \"number\") throw new KlfInputError(\"input.x must be a number\");\n\
         \x20   return {{ tripled: {expression} }};\n\
         \x20 }}\n\
         }}\n"
    );
    Scripted::Content(
        json!({
            "klf.toml": "description = \"Triple a number\"\nidempotent = true\ncapabilities = []\n\n[limits]\nmemory_mb = 16\ntimeout_ms = 1000\n",
            "main.js": module,
        })
        .to_string(),
    )
}

fn provider(server: &ModelServer) -> Arc<dyn Provider> {
    let client = OpenAiCompatible::new(ModelConfig {
        base_url: server.base_url(),
        model: "test-model".into(),
        api_key: None,
        max_attempts: 3,
        backoff: Duration::from_millis(10),
    })
    .expect("client");
    Arc::new(ModelBacked::new(Arc::new(client), "openai"))
}

async fn mesh_with_chef(server: &ModelServer) -> (InProcessMesh, Arc<Chef>) {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(10))
            .await
    );
    let providers: Vec<Arc<dyn Provider>> = vec![Arc::new(Offline), provider(server)];
    let chef = Chef::start(mesh.kitchens[0].clone(), providers)
        .await
        .expect("chef");
    (mesh, chef)
}

fn options() -> ChefOptions {
    ChefOptions {
        provider: "openai".into(),
        deploy: true,
        replicas: 1,
        deadline_ms: Some(60_000),
        ..ChefOptions::default()
    }
}

/// Runs `request` and collects its stage events.
async fn run(chef: &Chef, request: &str, options: &ChefOptions) -> (ChefRun, Vec<StageEvent>) {
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let run = chef
        .run(request, options, Some(events))
        .await
        .expect("the run starts");
    let mut all = Vec::new();
    while let Ok(event) = received.try_recv() {
        all.push(event);
    }
    (run, all)
}

async fn invoke(mesh: &InProcessMesh, node: usize, input: Value) -> Value {
    mesh.nodes[node]
        .invoke(InvokeRequest::new("triple", input, Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("triple from node{node}: {e}"))
        .output
}

fn system_prompt(request: &Value) -> String {
    request["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The requests the code generator made (its system prompt is the package contract).
fn code_requests(server: &ModelServer) -> Vec<Value> {
    server
        .requests()
        .into_iter()
        .filter(|r| system_prompt(r).starts_with("You write a function package"))
        .collect()
}

fn deployed(run: &ChefRun) {
    assert!(
        matches!(&run.outcome, RunOutcome::Deployed { function, version, .. } if function == "triple" && version == "1.0.0"),
        "not deployed: {:?}\nstages: {:#?}",
        run.outcome,
        run.stages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_recipe_fits_is_written_by_the_model_deployed_and_answers_elsewhere() {
    let server = ModelServer::start(vec![
        recipe_none(),
        requirement(),
        written_tests(),
        code("input.x * 3"),
    ])
    .await
    .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let (run, events) = run(&chef, REQUEST, &options()).await;
    deployed(&run);
    assert_eq!(run.repairs, 0);
    let requirement = run.requirement.as_ref().expect("requirement");
    assert!(requirement.is_freeform());
    assert_eq!(requirement.examples.len(), 3);
    let stages: Vec<&str> = run.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        stages,
        [
            "interpret",
            "write tests",
            "generate",
            "validate",
            "test",
            "deploy",
            "monitor"
        ]
    );
    assert!(
        run.stages[1]
            .detail
            .contains("2 written by the test generator"),
        "{}",
        run.stages[1].detail
    );
    let tests = run.tests.as_ref().expect("tests");
    assert_eq!(tests.failed, 0);
    assert!(
        tests.passed >= 5,
        "examples, written tests and edge cases: {tests:?}"
    );
    assert!(run.tokens_out > 0, "streamed tokens are counted");
    // The exchanges streamed, bounded, and asked for structured output.
    assert!(
        events
            .iter()
            .any(|e| e.status == "progress" && e.progress.is_some_and(|p| p.tokens > 0)),
        "no streaming progress among {} events",
        events.len()
    );
    for request in server.requests() {
        assert_eq!(request["stream"], json!(true));
        assert!(
            request["max_tokens"].as_u64().is_some_and(|m| m > 0),
            "{request}"
        );
        assert_eq!(request["response_format"]["type"], json!("json_schema"));
    }
    // It answers its examples from the node the Chef did not run on.
    assert_eq!(
        invoke(&mesh, 1, json!({"x": 1234567})).await,
        json!({"tripled": 3703701})
    );
    assert_eq!(
        invoke(&mesh, 1, json!({"x": 0})).await,
        json!({"tripled": 0})
    );
    let refused = mesh.nodes[1]
        .invoke(InvokeRequest::new(
            "triple",
            json!({"x": "a"}),
            Duration::from_secs(5),
        ))
        .await
        .expect_err("a string is refused");
    assert!(refused.message.contains("input.x"), "{refused}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_fails_a_held_test_is_repaired_and_never_sees_an_expected_output() {
    let server = ModelServer::start(vec![
        recipe_none(),
        requirement(),
        written_tests(),
        code("input.x * 2"),
        code("input.x * 3"),
    ])
    .await
    .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let (run, _) = run(&chef, REQUEST, &options()).await;
    deployed(&run);
    assert_eq!(run.repairs, 1);
    let stages: Vec<&str> = run.stages.iter().map(|s| s.stage.as_str()).collect();
    assert!(stages.contains(&"generate (repair 1)"), "{stages:?}");
    // (f) Two code exchanges; the repair saw its previous code and which tests failed, and
    // neither saw an expected output.
    let code = code_requests(&server);
    assert_eq!(code.len(), 2);
    for request in &code {
        let text = request.to_string();
        assert!(
            !text.contains(SENTINEL),
            "an expected output reached the generator"
        );
    }
    let repair = code[1]["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        repair.contains("input.x * 2"),
        "the previous code: {repair}"
    );
    assert!(repair.contains("test \"example: big\" failed"), "{repair}");
    assert!(repair.contains("is not the expected output"), "{repair}");
    // The person sees what was expected.
    let first_test = run.stages.iter().find(|s| s.stage == "test").expect("test");
    assert!(!first_test.ok);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_using_eval_is_refused_by_static_analysis_and_repaired() {
    let server = ModelServer::start(vec![
        recipe_none(),
        requirement(),
        written_tests(),
        code("eval(\"input.x * 3\")"),
        code("input.x * 3"),
    ])
    .await
    .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let (run, _) = run(&chef, REQUEST, &options()).await;
    deployed(&run);
    assert_eq!(run.repairs, 1);
    let validate = run
        .stages
        .iter()
        .find(|s| s.stage == "validate")
        .expect("validate");
    assert!(!validate.ok);
    assert!(validate.detail.contains("eval"), "{}", validate.detail);
    let repair = code_requests(&server)[1]["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(repair.contains("eval"), "the repair is told why: {repair}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_stops_is_bounded_by_max_tokens_and_the_run_fails_saying_why() {
    let server = ModelServer::start(vec![Scripted::Ramble])
        .await
        .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let options = ChefOptions {
        max_tokens: [("interpret".to_string(), 64)].into(),
        ..options()
    };
    let (run, _) = run(&chef, REQUEST, &options).await;
    let RunOutcome::Failed { reasons } = &run.outcome else {
        panic!("a rambling model built something: {:?}", run.outcome);
    };
    let reason = reasons.join("; ");
    assert!(
        reason.contains("cut off at the limit of 64 tokens"),
        "{reason}"
    );
    assert!(
        !reason.contains("deadline"),
        "bounded by max_tokens, not the deadline: {reason}"
    );
    // Every answer was asked for with the bound, and the repairs stopped: 3 answers, no more.
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one answer and two repairs");
    assert!(requests.iter().all(|r| r["max_tokens"] == json!(64)));
    assert!(run.total_ms < 60_000);
    // The unusable answers were paid for all the same: the run counts their tokens.
    assert!(
        run.tokens_out >= 3 * 64,
        "tokens of a failed stage: {}",
        run.tokens_out
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_deadline_ends_failed_naming_the_stage() {
    // No max_tokens bound the server honours here: it rambles slowly until the deadline.
    let server = ModelServer::start(vec![Scripted::Ramble])
        .await
        .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let options = ChefOptions {
        deadline_ms: Some(1_500),
        max_tokens: [("interpret".to_string(), 1_000_000)].into(),
        ..options()
    };
    let (run, _) = run(&chef, REQUEST, &options).await;
    let RunOutcome::Failed { reasons } = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    let reason = reasons.join("; ");
    assert!(
        reason.contains("deadline") && reason.contains("interpret"),
        "{reason}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_model_is_waited_out() {
    let server = ModelServer::start(vec![
        Scripted::Raw {
            status: 429,
            body: "slow down".into(),
            retry_after: Some(0),
        },
        recipe_none(),
        requirement(),
        written_tests(),
        code("input.x * 3"),
    ])
    .await
    .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let (run, _) = run(&chef, REQUEST, &options()).await;
    deployed(&run);
    assert_eq!(server.requests().len(), 5, "the 429 and four exchanges");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_writes_a_new_function_even_when_a_recipe_fits_and_needs_a_model() {
    let server = ModelServer::start(vec![requirement(), written_tests(), code("input.x * 3")])
        .await
        .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let fresh = ChefOptions {
        fresh: true,
        ..options()
    };
    // A request a recipe fits: with --fresh no recipe is chosen.
    let (run, _) = run(&chef, "convert CSV text into JSON records", &fresh).await;
    deployed(&run);
    assert!(
        !system_prompt(&server.requests()[0]).contains("Recipes:"),
        "--fresh skips the recipe choice"
    );
    let offline = ChefOptions {
        provider: "offline".into(),
        ..fresh
    };
    let refused = chef
        .run(REQUEST, &offline, None)
        .await
        .expect_err("--fresh offline");
    assert!(refused.to_string().contains("--fresh"), "{refused}");
    mesh.shutdown().await;
}
