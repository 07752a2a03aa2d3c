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

/// The exchanges of a model-written run: no recipe, the requirement, the tests, then one code
/// answer per round (the first, then each repair).
fn script(code_rounds: &[&str]) -> Vec<Scripted> {
    let mut script = vec![recipe_none(), requirement(), written_tests()];
    script.extend(code_rounds.iter().map(|expression| code(expression)));
    script
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
    // A deploy returns once its hosts serve it; another node learns of it by replication.
    assert!(
        klf_tests::wait_until(Duration::from_secs(5), || async {
            mesh.nodes[node].catalog().served("triple").is_some()
        })
        .await,
        "node{node} never learned of triple"
    );
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
    let server = ModelServer::start(script(&["input.x * 3"]))
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
    let server = ModelServer::start(script(&["input.x * 2", "input.x * 3"]))
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
    let server = ModelServer::start(script(&["eval(\"input.x * 3\")", "input.x * 3"]))
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
    let mut exchanges = vec![Scripted::Raw {
        status: 429,
        body: "slow down".into(),
        retry_after: Some(0),
    }];
    exchanges.extend(script(&["input.x * 3"]));
    let server = ModelServer::start(exchanges).await.expect("server");
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

/// Keeps the spans of this test binary's Chef runs (the mesh's trace target only).
#[derive(Clone, Debug, Default)]
struct KeptSpans(Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for KeptSpans {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend(batch);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_of_stages_and_genai_model_exchanges_without_prompt_text() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let kept = KeptSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(kept.clone())
        .build();
    // Global: the agents run on every worker thread. Other tests of this binary add spans of
    // their own runs; the asserts below pick this run's by its id.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("chef-test"))
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(klf_actors::router::trace::TARGET, tracing::Level::INFO),
        );
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("the only test of this binary that sets a subscriber");

    let server = ModelServer::start(script(&["input.x * 3"]))
        .await
        .expect("server");
    let (mesh, chef) = mesh_with_chef(&server).await;
    let (run, _) = run(&chef, REQUEST, &options()).await;
    deployed(&run);

    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let spans = kept.0.lock().map(|k| k.clone()).unwrap_or_default();
    let root = spans
        .iter()
        .find(|s| {
            s.name == "chef.run" && attribute(s, "chef.run_id").as_deref() == Some(&run.run_id)
        })
        .expect("the run's span");
    let trace = root.span_context.trace_id();
    assert_eq!(attribute(root, "chef.outcome").as_deref(), Some("deployed"));
    assert_eq!(attribute(root, "function").as_deref(), Some("triple"));
    assert_eq!(
        attribute(root, "gen_ai.usage.output_tokens"),
        Some(run.tokens_out.to_string())
    );
    let ours: Vec<_> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    let stages: Vec<String> = ours
        .iter()
        .filter(|s| s.name == "chef.stage")
        .filter(|s| s.parent_span_id == root.span_context.span_id())
        .filter_map(|s| attribute(s, "chef.stage"))
        .collect();
    for stage in [
        "interpret",
        "write tests",
        "generate",
        "validate",
        "test",
        "deploy",
    ] {
        assert!(stages.iter().any(|s| s == stage), "{stage} in {stages:?}");
    }
    // Each model exchange is a `chat` span under its stage, by the GenAI conventions.
    let chats: Vec<_> = ours.iter().filter(|s| s.name == "chat").collect();
    assert_eq!(chats.len(), 4, "recipe choice, requirement, tests, code");
    let stage_ids: Vec<_> = ours
        .iter()
        .filter(|s| s.name == "chef.stage")
        .map(|s| s.span_context.span_id())
        .collect();
    for chat in &chats {
        assert!(
            stage_ids.contains(&chat.parent_span_id),
            "a chat under a stage"
        );
        assert_eq!(
            attribute(chat, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            attribute(chat, "gen_ai.request.model").as_deref(),
            Some("test-model")
        );
        assert!(
            attribute(chat, "gen_ai.usage.input_tokens").is_some(),
            "{chat:?}"
        );
        assert!(
            attribute(chat, "gen_ai.usage.output_tokens").is_some(),
            "{chat:?}"
        );
        assert!(
            attribute(chat, "gen_ai.response.finish_reasons").is_some(),
            "{chat:?}"
        );
    }
    // No prompt or answer text on any span of the run.
    for span in &ours {
        for kv in &span.attributes {
            let value = kv.value.to_string();
            assert!(
                !value.contains("Triple a number") && !value.contains("tripled"),
                "{} carries text: {} = {value}",
                span.name,
                kv.key
            );
        }
    }
    mesh.shutdown().await;
}
