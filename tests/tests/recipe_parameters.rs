//! Recipe parameters: every shipped recipe with each of its parameters at a value other than its
//! default is built by the Chef on one in-process mesh — interpreted, tested against the recipe's
//! expectations at that value, validated, deployed — and its own tests pass where it runs; every
//! numeric parameter at its bounds still passes the acceptance tests; and a value outside what the
//! recipe takes is refused with what it allows, before any code is rendered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use klf_actors::chef::agents::RunContext;
use klf_actors::chef::messages::{Attempt, GeneratedCode, TechnicalRequirement};
use klf_actors::chef::providers::offline::{self, Offline};
use klf_actors::chef::providers::{
    Costed, Deployed, Interpretation, Provider, ProviderError, render_requirement, requirement_for,
};
use klf_actors::chef::{Chef, ChefOptions, RunOutcome, checks};
use klf_actors::functions::package::Package;
use klf_actors::ingredients::kinds::{ParamType, Recipe};
use klf_actors::ingredients::render::render;
use klf_actors::ingredients::{Body, Kind, Library, RenderRequest};
use klf_tests::{InProcessMesh, wait_until};
use serde_json::{Value, json};

/// The function every function parameter names unless the case is about that parameter.
const ECHO: &str = "echo";
/// The other value of a function parameter: another function that echoes its input, since the
/// recipes' examples say they assume one.
const MIRROR: &str = "mirror";

fn echoing(name: &str) -> Package {
    Package::from_parts(
        format!("name = \"{name}\"\nversion = \"1.0.0\"\ntype = \"system\"\nentry = \"native:echo\"\nidempotent = true\n"),
        String::new(),
        Vec::new(),
    )
    .expect("echo package")
}

/// One parameter at another value.
struct Case {
    recipe: &'static str,
    parameter: &'static str,
    value: Value,
    /// A request that states the value (`{}` stands for it), for the offline interpreter to read;
    /// `None` when no request can state it (a JSON value, a free string, one of two functions):
    /// the requirement then gets it the way the interpreter sets what a request states.
    request: Option<&'static str>,
    /// A value the recipe does not take, and words its refusal must contain.
    refused: (Value, &'static str),
}

fn case(
    recipe: &'static str,
    parameter: &'static str,
    value: Value,
    request: Option<&'static str>,
    refused: (Value, &'static str),
) -> Case {
    Case {
        recipe,
        parameter,
        value,
        request,
        refused,
    }
}

/// Every parameter of every shipped recipe (the test checks none is missing).
fn cases() -> Vec<Case> {
    vec![
        case(
            "market-analysis",
            "window",
            json!(8),
            Some("Analyze market data and find opportunities over a window of {} closes"),
            (json!(500), "(allowed 3 to 250)"),
        ),
        case(
            "market-analysis",
            "min_points",
            json!(6),
            Some(
                "Analyze market data and find opportunities, skip symbols with less than {} points",
            ),
            (json!(2), "(allowed 3 to 250)"),
        ),
        case(
            "market-analysis",
            "top",
            json!(3),
            Some("Analyze market data and find opportunities: the top {}"),
            (json!(51), "(allowed 1 to 50)"),
        ),
        case(
            "market-analysis",
            "buy_above",
            json!(0.7),
            Some("Analyze market data and find opportunities, buy above {}"),
            (json!(1.5), "(allowed 0 to 1)"),
        ),
        case(
            "market-analysis",
            "watch_above",
            json!(0.3),
            Some("Analyze market data and find opportunities, watch above {}"),
            (json!(-0.1), "(allowed 0 to 1)"),
        ),
        case(
            "metric-anomalies",
            "window",
            json!(4),
            Some("Flag unusual spikes in server CPU usage readings with a window of {}"),
            (json!(500), "(allowed 2 to 100)"),
        ),
        case(
            "metric-anomalies",
            "window",
            json!(30),
            Some("Flag unusual spikes in server CPU usage readings with a window of {}"),
            (json!(1), "(allowed 2 to 100)"),
        ),
        case(
            "metric-anomalies",
            "threshold",
            json!(2.5),
            Some("Flag unusual spikes in server CPU usage readings with a threshold of {}"),
            (json!(25), "(allowed 0.5 to 20)"),
        ),
        case(
            "record-cleaning",
            "max_age",
            json!(99),
            Some("Validate and clean customer records with a max age of {}"),
            (json!(300), "(allowed 1 to 200)"),
        ),
        case(
            "csv-to-json",
            "delimiter",
            json!("|"),
            Some("Convert CSV to JSON records, columns separated by {}"),
            (json!(":"), "is not one of"),
        ),
        case(
            "webhook-router",
            "sink",
            json!(MIRROR),
            Some("Receive webhooks and route events by type to the {} function"),
            (json!("Mirror Function"), "is not a function name"),
        ),
        case(
            "webhook-router",
            "types",
            json!(["order.created", "user.deleted"]),
            None,
            (json!("order.created"), "does not have the shape"),
        ),
        case(
            "rate-limited-call",
            "target",
            json!(MIRROR),
            Some("Call the {} function with a rate limit and retries"),
            (json!("../mirror"), "is not a function name"),
        ),
        case(
            "rate-limited-call",
            "per_second",
            json!(2),
            Some("Call the echo function with a rate limit of {} per second"),
            (json!(0), "(allowed 0.01 to 100000)"),
        ),
        case(
            "rate-limited-call",
            "burst",
            json!(3),
            Some("Call the echo function with a rate limit and a burst of {}"),
            (json!(0), "(allowed 1 to 100000)"),
        ),
        case(
            "token-check",
            "tokens_secret",
            json!("service-tokens"),
            None,
            (json!("../tokens"), "is not a secret name"),
        ),
        case(
            "token-check",
            "roles",
            json!({"alice": ["analyst"], "bob": ["admin"]}),
            None,
            (json!({"alice": "admin"}), "does not have the shape"),
        ),
        case(
            "field-encryption",
            "key_secret",
            json!("pii-key"),
            None,
            (json!(".hidden"), "is not a secret name"),
        ),
        case(
            "field-encryption",
            "fields",
            json!(["ssn", "card.number"]),
            None,
            (json!(["ssn", ""]), "does not have the shape"),
        ),
        case(
            "scheduled-report",
            "sink",
            json!(MIRROR),
            Some("Collect metrics and deliver a scheduled report to the {} function"),
            (json!("-mirror"), "is not a function name"),
        ),
        case(
            "scheduled-report",
            "collection",
            json!("cpu-samples"),
            None,
            (json!("a/b"), "does not have the shape"),
        ),
        case(
            "fan-out-fan-in",
            "worker",
            json!(MIRROR),
            Some("Fan out work to the {} function and combine the results"),
            (json!("Mirror"), "is not a function name"),
        ),
        case(
            "fan-out-fan-in",
            "field",
            json!("n"),
            None,
            (json!(""), "does not have the shape"),
        ),
        case(
            "fan-out-fan-in",
            "concurrency",
            json!(2),
            Some(
                "Fan out work to the echo function and combine the results with a concurrency of {}",
            ),
            (json!(1000), "(allowed 1 to 256)"),
        ),
        case(
            "rule-decisions",
            "rules",
            json!([
                {"id": "big-order", "priority": 10, "when": {"field": "amount", "op": "gte", "value": 2000}, "then": "review"},
                {"id": "blocked-country", "priority": 100, "when": {"field": "country", "op": "in", "value": ["XX"]}, "then": "reject"},
            ]),
            None,
            (json!([{"id": "r", "when": {}}]), "does not have the shape"),
        ),
        case(
            "rule-decisions",
            "default_decision",
            json!("review"),
            None,
            (json!(""), "does not have the shape"),
        ),
        case(
            "order-workflow",
            "payments",
            json!(MIRROR),
            None,
            (json!("Payments!"), "is not a function name"),
        ),
        case(
            "order-workflow",
            "notifier",
            json!(MIRROR),
            None,
            (json!("1notifier"), "is not a function name"),
        ),
        case(
            "online-forecast",
            "lambda",
            json!(0.5),
            Some("Learn online and forecast with a lambda of {}"),
            (json!(5000), "(allowed 0 to 1000)"),
        ),
        case(
            "online-forecast",
            "state_key",
            json!("forecast-state"),
            None,
            (json!("a b"), "does not have the shape"),
        ),
    ]
}

fn recipe<'l>(library: &'l Library, name: &str) -> &'l Recipe {
    library.recipe(name).expect("recipe").1
}

/// The function a case builds: named after the recipe, the parameter and the value, so each case
/// deploys a function of its own.
fn function_of(case: &Case) -> String {
    let value = match &case.value {
        Value::Number(n) => format!("-{}", n.to_string().replace('.', "-")),
        _ => String::new(),
    };
    format!(
        "{}-{}{value}",
        case.recipe,
        case.parameter.replace('_', "-")
    )
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_string)
}

/// The request of a case, naming its function; for a case without a request, one the offline
/// interpreter maps to the recipe (with the echo function where the recipe takes one).
fn request_of(case: &Case, library: &Library) -> String {
    let function = function_of(case);
    match case.request {
        Some(request) => format!(
            "{}, call it {function}",
            request.replace("{}", &text(&case.value))
        ),
        None => {
            let r = recipe(library, case.recipe);
            let calls_one = r
                .parameters
                .iter()
                .filter(|p| p.kind == ParamType::Function)
                .count()
                == 1;
            let to = if calls_one {
                " to the echo function"
            } else {
                ""
            };
            format!("{}{to}, call it {function}", r.title)
        }
    }
}

/// The offline interpreter, with the values no request can state set the way it sets the ones a
/// request states (every other function parameter names the echo function).
struct Pinned(Arc<Mutex<BTreeMap<String, BTreeMap<String, Value>>>>);

impl Provider for Pinned {
    fn name(&self) -> &'static str {
        "pinned"
    }

    fn interpret(
        &self,
        request: String,
        library: Arc<Library>,
        _deployed: Vec<Deployed>,
        _cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<Interpretation>, ProviderError>> {
        let set = self
            .0
            .lock()
            .map(|pins| pins.get(&request).cloned().unwrap_or_default())
            .unwrap_or_default();
        Box::pin(async move {
            let mut interpretation = offline::interpret(&request, &library);
            if let Interpretation::Requirement(requirement) = &mut interpretation {
                requirement.params.extend(set);
            }
            Ok(Costed::free(interpretation))
        })
    }

    fn generate(
        &self,
        requirement: TechnicalRequirement,
        attempt: Attempt,
        library: Arc<Library>,
        cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<GeneratedCode>, ProviderError>> {
        Offline.generate(requirement, attempt, library, cx)
    }
}

/// What a case sets without a request: its value, and the echo function for the recipe's other
/// function parameters.
fn pins_of(case: &Case, library: &Library) -> BTreeMap<String, Value> {
    let mut pins: BTreeMap<String, Value> = recipe(library, case.recipe)
        .parameters
        .iter()
        .filter(|p| p.kind == ParamType::Function)
        .map(|p| (p.name.clone(), json!(ECHO)))
        .collect();
    pins.insert(case.parameter.to_string(), case.value.clone());
    pins
}

/// The secrets the recipes' tests need, on every node, under their default names and the names
/// the cases give them.
fn write_secrets(mesh: &InProcessMesh, library: &Library) {
    let renamed = BTreeMap::from([("api-tokens", "service-tokens"), ("field-key", "pii-key")]);
    for ingredient in library.list(Some(Kind::Recipe)) {
        let Body::Recipe(r) = &ingredient.body else {
            continue;
        };
        for (name, content) in &r.fixtures.secrets {
            for i in 0..mesh.nodes.len() {
                let dir = mesh.dir.path().join(format!("node{i}")).join("secrets");
                std::fs::create_dir_all(&dir).expect("secrets dir");
                std::fs::write(dir.join(name), content).expect("secret");
                if let Some(other) = renamed.get(name.as_str()) {
                    std::fs::write(dir.join(other), content).expect("secret");
                }
            }
        }
    }
}

#[test]
fn every_parameter_of_every_shipped_recipe_has_a_case_and_every_number_a_range() {
    let library = Library::shipped();
    let cases = cases();
    let mut recipes = 0;
    for ingredient in library.list(Some(Kind::Recipe)) {
        let Body::Recipe(r) = &ingredient.body else {
            continue;
        };
        recipes += 1;
        for p in &r.parameters {
            assert!(
                cases
                    .iter()
                    .any(|c| c.recipe == r.name && c.parameter == p.name),
                "no case for {}.{}",
                r.name,
                p.name
            );
            if matches!(p.kind, ParamType::Integer | ParamType::Number) {
                assert!(
                    p.min.is_some() && p.max.is_some(),
                    "{}.{} has no range",
                    r.name,
                    p.name
                );
            }
        }
    }
    assert_eq!(recipes, 13);
}

/// A value outside what the recipe takes: refused by rendering (as `klf ingredients render --set`
/// and the model provider check it), and — for the values a request can state — by the offline
/// interpreter with the range, before anything is rendered.
#[test]
fn a_value_the_recipe_does_not_take_is_refused_with_what_it_allows() {
    let library = Library::shipped();
    for case in cases() {
        let r = recipe(&library, case.recipe);
        let mut set = pins_of(&case, &library);
        set.insert(case.parameter.into(), case.refused.0.clone());
        let refused = render(
            &library,
            &RenderRequest {
                recipe: case.recipe.into(),
                name: None,
                set,
            },
        )
        .expect_err(&format!(
            "{}.{} = {}",
            case.recipe, case.parameter, case.refused.0
        ));
        let message = refused.to_string();
        assert!(
            message.contains(&format!("parameter `{}`", case.parameter)),
            "{message}"
        );
        let p = r
            .parameters
            .iter()
            .find(|p| p.name == case.parameter)
            .expect("parameter");
        if matches!(p.kind, ParamType::Integer | ParamType::Number) {
            assert!(
                message.contains("minimum") || message.contains("maximum"),
                "{message}"
            );
        } else {
            assert!(message.contains(case.refused.1), "{message}");
        }
        let Some(request) = case.request else {
            continue;
        };
        if !matches!(p.kind, ParamType::Integer | ParamType::Number) {
            continue;
        }
        let request = request.replace("{}", &text(&case.refused.0));
        match offline::interpret(&request, &library) {
            Interpretation::NoMatch(no) => {
                let expected = format!(
                    "{} = {} is {} for recipe {}",
                    case.parameter,
                    text(&case.refused.0),
                    if case.refused.0.as_f64() < p.min {
                        format!("below the minimum {}", p.min.unwrap_or_default())
                    } else {
                        format!("above the maximum {}", p.max.unwrap_or_default())
                    },
                    case.recipe
                );
                assert!(no.reason.starts_with(&expected), "{request}: {}", no.reason);
                assert!(no.reason.ends_with(case.refused.1), "{}", no.reason);
                assert_eq!(no.closest[0].recipe, case.recipe);
            }
            Interpretation::Requirement(r) => {
                panic!("{request}: not refused: {:?}", r.params)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_at_another_value_is_built_tested_and_deployed_and_its_bounds_pass_the_tests()
 {
    let began = Instant::now();
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(10))
            .await
    );
    let library = mesh.kitchens[0].ingredients().clone();
    write_secrets(&mesh, &library);
    for name in [ECHO, MIRROR] {
        mesh.nodes[0]
            .publish(echoing(name), 2, "admin")
            .await
            .expect("echo");
    }
    let pins = Arc::new(Mutex::new(BTreeMap::new()));
    let providers: Vec<Arc<dyn Provider>> = vec![Arc::new(Offline), Arc::new(Pinned(pins.clone()))];
    let chef = Chef::start(mesh.kitchens[0].clone(), providers)
        .await
        .expect("chef");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            mesh.nodes
                .iter()
                .all(|n| n.catalog().deployment(MIRROR).is_some())
        })
        .await
    );

    let mut failures = Vec::new();
    for case in cases() {
        let started = Instant::now();
        let request = request_of(&case, &library);
        let provider = if case.request.is_some() {
            "offline"
        } else {
            if let Ok(mut pins) = pins.lock() {
                pins.insert(request.clone(), pins_of(&case, &library));
            }
            "pinned"
        };
        let what = format!("{}.{} = {}", case.recipe, case.parameter, case.value);
        let options = ChefOptions {
            provider: provider.into(),
            deploy: true,
            replicas: 1,
            ..ChefOptions::default()
        };
        let run = match chef.run(&request, &options, None).await {
            Ok(run) => run,
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                continue;
            }
        };
        let function = function_of(&case);
        let Some(requirement) = run.requirement.as_ref() else {
            failures.push(format!("{what}: no requirement: {:?}", run.outcome));
            continue;
        };
        if requirement.recipe != case.recipe || requirement.function != function {
            failures.push(format!(
                "{what}: {request:?} became {} named {}",
                requirement.recipe, requirement.function
            ));
            continue;
        }
        let taken = requirement.params.get(case.parameter).is_some_and(|v| {
            v.as_f64()
                .zip(case.value.as_f64())
                .map_or(v == &case.value, |(a, b)| a == b)
        });
        let stated =
            case.request.is_none() || requirement.extracted.iter().any(|e| e == case.parameter);
        if !taken || !stated {
            failures.push(format!(
                "{what}: the requirement has {:?} (read from the request: {:?})",
                requirement.params, requirement.extracted
            ));
            continue;
        }
        if !matches!(run.outcome, RunOutcome::Deployed { .. }) {
            let tests: Vec<String> = run
                .tests
                .iter()
                .flat_map(|t| t.cases.iter().filter(|c| !c.passed))
                .map(|c| format!("{}: {}", c.name, c.detail.clone().unwrap_or_default()))
                .collect();
            failures.push(format!(
                "{what}: {:?}\nfailed tests: {tests:#?}",
                run.outcome
            ));
            continue;
        }
        let tested = run.tests.as_ref().is_some_and(|t| t.ok() && t.passed > 0);
        if !tested {
            failures.push(format!("{what}: acceptance tests {:?}", run.tests));
        }
        // A function parameter is a dependency of the package.
        let p = recipe(&library, case.recipe)
            .parameters
            .iter()
            .find(|p| p.name == case.parameter)
            .map(|p| p.kind);
        if p == Some(ParamType::Function) {
            let depends = mesh.nodes[0]
                .catalog()
                .versions(&function)
                .iter()
                .any(|r| r.manifest.dependencies.contains_key(MIRROR));
            if !depends {
                failures.push(format!("{what}: {function} does not depend on {MIRROR}"));
            }
        }
        // The package's own tests, where it runs, follow the parameter too.
        match mesh.nodes[0]
            .router()
            .test_function(&function, &semver::VersionReq::STAR)
            .await
        {
            Ok(own) if own.failed == 0 && own.passed > 0 => {}
            Ok(own) => failures.push(format!(
                "{what}: own tests: {}",
                serde_json::to_string_pretty(
                    &own.results
                        .iter()
                        .filter(|r| r["passed"] != true)
                        .collect::<Vec<_>>()
                )
                .unwrap_or_default()
            )),
            Err(e) => failures.push(format!("{what}: own tests: {}", e.message)),
        }
        eprintln!("{what}: {:?}", started.elapsed());
    }
    eprintln!("{} cases deployed in {:?}", cases().len(), began.elapsed());

    // Every numeric parameter at both ends of its range: the acceptance tests (examples, edge
    // cases) still hold, so no in-range value leaves the recipe's tests wrong.
    let bounds_began = Instant::now();
    let instances = mesh.nodes[0].router().instances();
    for ingredient in library.list(Some(Kind::Recipe)) {
        let Body::Recipe(r) = &ingredient.body else {
            continue;
        };
        for p in r
            .parameters
            .iter()
            .filter(|p| matches!(p.kind, ParamType::Integer | ParamType::Number))
        {
            for bound in [p.min, p.max].into_iter().flatten() {
                let value = if p.kind == ParamType::Integer {
                    json!(bound as i64)
                } else {
                    json!(bound)
                };
                let what = format!("{}.{} = {value}", r.name, p.name);
                let mut params: BTreeMap<String, Value> = r
                    .parameters
                    .iter()
                    .filter(|q| q.kind == ParamType::Function)
                    .map(|q| (q.name.clone(), json!(ECHO)))
                    .collect();
                params.insert(p.name.clone(), value);
                let requirement =
                    requirement_for(&what, r, None, params, Vec::new(), 1.0, Vec::new());
                let tests = match checks::acceptance_tests(&requirement, &library) {
                    Ok(tests) => tests,
                    Err(e) => {
                        failures.push(format!("{what}: acceptance tests: {e}"));
                        continue;
                    }
                };
                let code = match render_requirement(&requirement, 0, &library) {
                    Ok(code) => code,
                    Err(e) => {
                        failures.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                let result =
                    checks::run_tests(&code, &tests, |release| instances.host_for(release)).await;
                if !result.ok() {
                    let failed: Vec<String> = result
                        .cases
                        .iter()
                        .filter(|c| !c.passed)
                        .map(|c| format!("{}: {}", c.name, c.detail.clone().unwrap_or_default()))
                        .collect();
                    failures.push(format!("{what}: {failed:#?}"));
                }
            }
        }
    }
    eprintln!("bounds in {:?}", bounds_began.elapsed());
    chef.stop();
    mesh.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The request of the problem report, out of range: the run ends before any code exists, as a
/// no-match that says what the recipe allows, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_window_the_recipe_does_not_take_ends_before_any_code_with_the_range() {
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    let providers: Vec<Arc<dyn Provider>> = vec![Arc::new(Offline)];
    let chef = Chef::start(mesh.kitchens[0].clone(), providers)
        .await
        .expect("chef");
    let before = mesh.nodes[0].catalog().releases().count();
    let run = chef
        .run(
            "Flag unusual spikes in server CPU usage readings with a window of 500",
            &ChefOptions {
                deploy: true,
                ..ChefOptions::default()
            },
            None,
        )
        .await
        .expect("run");
    match &run.outcome {
        RunOutcome::NoMatch(no) => assert_eq!(
            no.reason,
            "window = 500 is above the maximum 100 for recipe metric-anomalies (allowed 2 to 100)"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let stages: Vec<&str> = run.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, ["interpret"]);
    assert!(run.code_dir.is_none(), "{:?}", run.code_dir);
    assert_eq!(mesh.nodes[0].catalog().releases().count(), before);
    chef.stop();
    mesh.shutdown().await;
}
