//! The Chef's model-backed providers against a real local HTTP server that speaks the
//! chat-completions API (`klf_tests::model_server`), through the real `OpenAiCompatible` client:
//! a good answer, malformed answers repaired, 429 then success, 401 without a retry, an honest
//! "no recipe fits", a repair round that rewrites main.js only, and record/replay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use klf_actors::chef::agents::RunContext;
use klf_actors::chef::messages::TechnicalRequirement;
use klf_actors::chef::providers::model::{ModelBacked, elide};
use klf_actors::chef::providers::replay::{Recording, Replay};
use klf_actors::chef::providers::{
    Interpretation, Provider, ProviderError, offline, provider_from, render_requirement,
};
use klf_actors::ingredients::Library;
use klf_actors::model::{ModelConfig, OpenAiCompatible};
use klf_tests::model_server::{ModelServer, Scripted};
use serde_json::{Value, json};

const REQUEST: &str = "Analyze market data and find opportunities: the top 3, call it market-scout";

fn good_answer() -> String {
    json!({
        "recipe": "market-analysis",
        "params": { "top": 3 },
        "function": "market-scout",
        "reason": "the request asks to rank market opportunities"
    })
    .to_string()
}

fn library() -> Arc<Library> {
    Arc::new(Library::shipped())
}

fn client(server: &ModelServer) -> OpenAiCompatible {
    OpenAiCompatible::new(ModelConfig {
        base_url: server.base_url(),
        model: "test-model".into(),
        api_key: Some("test-key".into()),
        max_attempts: 3,
        backoff: Duration::from_millis(10),
    })
    .expect("client")
}

fn openai(server: &ModelServer) -> ModelBacked {
    ModelBacked::new(Arc::new(client(server)), "openai")
}

async fn server(script: Vec<Scripted>) -> ModelServer {
    ModelServer::start(script).await.expect("model server")
}

fn content(text: String) -> Scripted {
    Scripted::Content(text)
}

/// The content of the last message of a request the server received.
fn last_message(request: &Value) -> String {
    request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Tokens as the test server counts them: words of the prompt, words of the answer.
fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn prompt_words(request: &Value) -> u64 {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| words(m["content"].as_str().unwrap_or_default()))
                .sum()
        })
        .unwrap_or(0)
}

fn requirement(interpretation: Interpretation) -> TechnicalRequirement {
    match interpretation {
        Interpretation::Requirement(r) => *r,
        Interpretation::NoMatch(no) => panic!("no match: {no:?}"),
    }
}

/// Round `round` of the generator, told `feedback` (the previous code is the recipe's own).
fn attempt(round: u32, feedback: Vec<String>) -> klf_actors::chef::messages::Attempt {
    klf_actors::chef::messages::Attempt {
        round,
        feedback,
        previous: None,
    }
}

#[tokio::test]
async fn a_good_answer_becomes_the_requirement() {
    let server = server(vec![content(good_answer())]).await;
    let answer = openai(&server)
        .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
        .await
        .expect("interpret");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    // A structured output: the answer's JSON Schema goes with the request.
    assert_eq!(requests[0]["response_format"]["type"], json!("json_schema"));
    assert_eq!(
        requests[0]["response_format"]["json_schema"]["schema"]["required"],
        json!(["recipe"])
    );
    assert!(requests[0]["max_tokens"].as_u64().is_some_and(|m| m > 0));
    assert_eq!(requests[0]["messages"][0]["role"], "system");
    let system = requests[0]["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(system.contains("## market-analysis"), "{system}");
    assert!(
        system.contains("- top (integer), 1 to 50, default 5"),
        "{system}"
    );
    assert_eq!(last_message(&requests[0]), REQUEST);

    assert_eq!(answer.model, "test-model");
    assert_eq!(answer.usage.input_tokens, prompt_words(&requests[0]));
    assert_eq!(answer.usage.output_tokens, words(&good_answer()));
    let requirement = requirement(answer.value);
    assert_eq!(requirement.recipe, "market-analysis");
    assert_eq!(requirement.function, "market-scout");
    assert_eq!(requirement.params["top"], json!(3));
    assert_eq!(
        requirement.params["window"],
        json!(20),
        "defaults fill the rest"
    );
    assert_eq!(requirement.extracted, vec!["top"]);
    // The offline ranking also finds market-analysis for this request.
    assert_eq!(requirement.confidence, 1.0);
    assert!(
        requirement
            .alternatives
            .iter()
            .all(|c| c.recipe != "market-analysis")
    );
    assert_eq!(
        requirement
            .steps
            .iter()
            .map(|s| s.base_class.as_str())
            .collect::<Vec<_>>(),
        ["BaseDataProcessor", "BaseModelProcessor", "BasePredictor"]
    );
}

#[tokio::test]
async fn a_malformed_answer_and_an_unknown_recipe_are_repaired() {
    let unknown = json!({"recipe": "stock-picker", "params": {}}).to_string();
    let server = server(vec![
        content("Here is what I think: market-analysis".into()),
        content(unknown.clone()),
        content(good_answer()),
    ])
    .await;
    let answer = openai(&server)
        .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
        .await
        .expect("interpret after repairs");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // Each repair sends the bad answer back with the exact problem.
    let first = last_message(&requests[1]);
    assert!(
        first.starts_with("your answer is unusable: it is not JSON"),
        "{first}"
    );
    assert!(
        first.ends_with("answer again with only the JSON object"),
        "{first}"
    );
    assert_eq!(
        requests[1]["messages"][2],
        json!({"role": "assistant", "content": "Here is what I think: market-analysis"})
    );
    let second = last_message(&requests[2]);
    assert!(
        second.contains("there is no recipe named \"stock-picker\"; the recipes are "),
        "{second}"
    );
    assert!(second.contains("market-analysis"), "{second}");
    // Tokens of every exchange are counted.
    let spent: u64 = requests.iter().map(prompt_words).sum();
    assert_eq!(answer.usage.input_tokens, spent);
    assert_eq!(
        answer.usage.output_tokens,
        words("Here is what I think: market-analysis") + words(&unknown) + words(&good_answer())
    );
    assert_eq!(requirement(answer.value).params["top"], json!(3));
}

#[tokio::test]
async fn answers_that_stay_unusable_fail_naming_the_last_problem() {
    let server = server(vec![
        content("no".into()),
        content("{\"recipe\": \"market-analysis\", \"params\": {\"top\": 500}}".into()),
    ])
    .await;
    let error = openai(&server)
        .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error.cause(), ProviderError::Unusable(_)),
        "{error}"
    );
    assert!(
        error.usage().output_tokens > 0,
        "the answers' tokens stay spent: {error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("parameter \"top\": 500 is above the maximum 50"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 3, "one answer and two repairs");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out() {
    let server = server(vec![
        Scripted::Raw {
            status: 429,
            body: "{\"error\": {\"message\": \"rate limited\"}}".into(),
            retry_after: Some(0),
        },
        content(good_answer()),
    ])
    .await;
    let answer = openai(&server)
        .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
        .await
        .expect("interpret after a 429");
    assert_eq!(server.requests().len(), 2);
    assert_eq!(requirement(answer.value).recipe, "market-analysis");
}

#[tokio::test]
async fn bad_credentials_fail_without_a_retry() {
    let server = server(vec![
        Scripted::Raw {
            status: 401,
            body: "{\"error\": {\"message\": \"invalid api key\"}}".into(),
            retry_after: None,
        },
        content(good_answer()),
    ])
    .await;
    let error = openai(&server)
        .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ProviderError::Model(_)), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("401") && text.contains("invalid api key"),
        "{text}"
    );
    assert_eq!(server.requests().len(), 1, "a 401 is never retried");
}

#[tokio::test]
async fn no_recipe_and_a_refusal_to_write_one_is_answered_honestly_with_the_closest() {
    // No recipe fits, so the model is asked to write the function itself; it declines.
    let reason = "a poem is not something a function of these recipes writes";
    let refusal = "a poem is not a function of JSON input";
    let server = server(vec![
        content(
            json!({"recipe": null, "params": {}, "function": null, "reason": reason}).to_string(),
        ),
        content(json!({ "refuse": refusal }).to_string()),
    ])
    .await;
    let answer = openai(&server)
        .interpret(
            "write a poem about stock prices".into(),
            library(),
            Vec::new(),
            RunContext::default(),
        )
        .await
        .expect("interpret");
    let Interpretation::NoMatch(no) = answer.value else {
        panic!("expected no match: {:?}", answer.value);
    };
    assert_eq!(no.reason, format!("{refusal} ({reason})"));
    assert_eq!(no.request, "write a poem about stock prices");
    assert_eq!(server.requests().len(), 2);
    assert!(!no.closest.is_empty() && no.closest.len() <= 3, "{no:?}");
    assert_eq!(no.closest[0].recipe, "market-analysis", "{no:?}");
}

/// The offline requirement for the market request (what a repair round starts from).
fn market_requirement() -> TechnicalRequirement {
    requirement(offline::interpret(REQUEST, &library()))
}

#[tokio::test]
async fn a_repair_round_rewrites_main_js_only() {
    let requirement = market_requirement();
    let scaffold = render_requirement(&requirement, 1, &library()).expect("render");
    let module = scaffold.files["main.js"].clone();
    // The model sees the module with the embedded tests elided, and answers in kind ...
    let answer = format!(
        "{}\n// repaired: the window is clamped before scoring\n",
        elide(&module).module
    );
    // ... and gets back the module with the tests restored.
    let repaired = format!("{module}\n// repaired: the window is clamped before scoring\n");
    let server = server(vec![
        // First try also rewrites the manifest: refused, and the model is told why.
        content(json!({"main.js": answer, "klf.toml": "name = \"x\""}).to_string()),
        content(json!({"main.js": answer}).to_string()),
    ])
    .await;
    let feedback = vec!["test flat-series: expected [] but got an error".to_string()];

    // Round 0 without feedback: the recipe as rendered, no model call.
    let first = openai(&server)
        .generate(
            requirement.clone(),
            attempt(0, Vec::new()),
            library(),
            RunContext::default(),
        )
        .await
        .expect("round 0");
    assert_eq!(first.value.files["main.js"], module);
    assert_eq!((first.usage.input_tokens, first.model.as_str()), (0, ""));
    assert!(server.requests().is_empty());

    let code = openai(&server)
        .generate(
            requirement,
            attempt(1, feedback.clone()),
            library(),
            RunContext::default(),
        )
        .await
        .expect("repair round");
    assert_eq!(code.value.round, 1);
    assert_eq!(code.value.files["main.js"], repaired);
    assert_eq!(code.value.files.len(), scaffold.files.len());
    for (path, text) in &scaffold.files {
        if path != "main.js" {
            assert_eq!(&code.value.files[path], text, "{path} must not change");
        }
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let asked = requests[0]["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(asked.contains(&feedback[0]), "{asked}");
    assert!(
        asked.contains("static tests = \"@kept\";"),
        "the current module is sent, its tests elided"
    );
    assert!(asked.len() < module.len() / 2, "{} bytes", asked.len());
    assert!(asked.contains("\"recipe\": \"market-analysis\""), "{asked}");
    let repair = last_message(&requests[1]);
    assert!(
        repair.contains("only main.js may be changed, but the answer also has klf.toml"),
        "{repair}"
    );
    assert!(code.usage.input_tokens > 0 && code.usage.output_tokens > 0);
    assert_eq!(code.model, "test-model");
}

#[tokio::test]
async fn a_repair_may_not_touch_the_embedded_tests() {
    let requirement = market_requirement();
    let module = render_requirement(&requirement, 1, &library())
        .expect("render")
        .files["main.js"]
        .clone();
    let cheat: String = elide(&module)
        .module
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("static tests =") {
                "  static tests = [];"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let server = server(vec![content(json!({"main.js": cheat}).to_string())]).await;
    let error = openai(&server)
        .generate(
            requirement,
            attempt(1, vec!["a test failed".into()]),
            library(),
            RunContext::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error.cause(), ProviderError::Unusable(_)),
        "{error}"
    );
    assert!(
        error.usage().output_tokens > 0,
        "the answers' tokens stay spent: {error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("the line `static tests = \"@kept\";` is missing or changed"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 3);
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chef/market-analysis.json")
}

/// Rewrites the committed recording from the local model server; run it after changing the
/// prompts: `cargo test -p klf-tests --test chef_providers -- --ignored record_the_replay_fixture`.
#[tokio::test]
#[ignore = "rewrites tests/fixtures/chef/market-analysis.json"]
async fn record_the_replay_fixture() {
    let requirement = market_requirement();
    let module = render_requirement(&requirement, 1, &library())
        .expect("render")
        .files["main.js"]
        .clone();
    let repaired = format!(
        "{}\n// repaired: the window is clamped before scoring\n",
        elide(&module).module
    );
    let server = server(vec![
        content("market-analysis, with top 3".into()),
        content(good_answer()),
        content(json!({"main.js": repaired}).to_string()),
    ])
    .await;
    let recording = Arc::new(Recording::new(client(&server)));
    let provider = ModelBacked::new(recording.clone(), "openai");
    let interpreted = provider
        .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
        .await
        .expect("interpret");
    let requirement = self::requirement(interpreted.value);
    provider
        .generate(
            requirement,
            attempt(
                1,
                vec!["test flat-series: expected [] but got an error".into()],
            ),
            library(),
            RunContext::default(),
        )
        .await
        .expect("generate");
    assert_eq!(recording.exchanges().len(), 3);
    recording.save(&fixture()).expect("save");
}

#[tokio::test]
async fn the_committed_recording_replays_to_the_same_requirement() {
    // What the live provider concludes (one good answer) ...
    let server = server(vec![content(good_answer())]).await;
    let live = requirement(
        openai(&server)
            .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
            .await
            .expect("live")
            .value,
    );
    // ... the replay concludes from the recording (an unusable answer, its repair, then a repair
    // round of the generator), through provider_from as `klf chef --provider replay` would.
    let provider = provider_from("replay", Some(&fixture())).expect("replay provider");
    assert_eq!(provider.name(), "replay");
    let replayed = provider
        .interpret(REQUEST.into(), library(), Vec::new(), RunContext::default())
        .await
        .expect("replayed interpretation");
    assert_eq!(replayed.model, "test-model");
    assert!(replayed.usage.input_tokens > 0);
    let replayed = requirement(replayed.value);
    assert_eq!(replayed, live);
    let code = provider
        .generate(
            replayed,
            attempt(
                1,
                vec!["test flat-series: expected [] but got an error".into()],
            ),
            library(),
            RunContext::default(),
        )
        .await
        .expect("replayed repair round");
    assert!(
        code.value.files["main.js"]
            .ends_with("// repaired: the window is clamped before scoring\n")
    );
}

#[tokio::test]
async fn a_mismatched_replay_says_which_exchange_and_what_differs() {
    let replay = Replay::load(&fixture()).expect("recording");
    let provider = ModelBacked::new(Arc::new(replay), "replay");
    let error = provider
        .interpret(
            "find trading opportunities in my portfolio".into(),
            library(),
            Vec::new(),
            RunContext::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ProviderError::Model(_)), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("market-analysis.json: exchange 1 of 3 differs"),
        "{text}"
    );
    assert!(
        text.contains("message 2 (user) differs at character 0"),
        "{text}"
    );
    assert!(text.contains("find trading opportunities"), "{text}");
    assert!(text.contains("record it again"), "{text}");
}

#[test]
fn providers_are_chosen_by_name_and_setup_errors_say_what_to_do() {
    assert_eq!(
        provider_from("offline", None).map(|p| p.name()).ok(),
        Some("offline")
    );
    let error = provider_from("replay", None).err().map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("KLF_CHEF_REPLAY=FILE")),
        "{error:?}"
    );
    let missing = Path::new("/nonexistent/recording.json");
    let error = provider_from("replay", Some(missing))
        .err()
        .map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("cannot read the recording /nonexistent/recording.json")),
        "{error:?}"
    );
    let error = provider_from("claude", None).err().map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("use one of offline, openai, replay")),
        "{error:?}"
    );
    if ModelConfig::from_env().is_none() {
        let error = provider_from("openai", None).err();
        assert!(
            matches!(&error, Some(ProviderError::Setup { provider, .. }) if provider == "openai"),
            "{error:?}"
        );
        let text = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("KLF_MODEL_BASE_URL") && text.contains("KLF_MODEL_API_KEY"),
            "{text}"
        );
    }
}
