//! Ingredients: every shipped ingredient loads; malformed files are reported with file and field
//! while the others load; user folders add and override; every shipped recipe renders, deploys on a
//! real two-node mesh, passes its own tests and gives the right answer to a hand-written input
//! invoked from the other node; and the `klf ingredients` commands work from the command line.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use klf_actors::functions::package::Package;
use klf_actors::ingredients::kinds::{BASE_CLASSES, Group};
use klf_actors::ingredients::render::render;
use klf_actors::ingredients::{Body, Kind, Library, Origin, RenderRequest};
use klf_actors::node::Node;
use klf_actors::router::{InvokeErrorKind, InvokeRequest};
use klf_tests::processes::{ProcessMesh, klf_run};
use klf_tests::{InProcessMesh, wait_until};
use serde_json::{Value, json};

#[test]
fn every_shipped_ingredient_loads_and_the_recipes_cover_every_base_group() {
    let library = Library::shipped();
    assert!(
        library.errors().is_empty(),
        "shipped ingredients with errors: {:#?}",
        library.errors()
    );
    for kind in Kind::ALL {
        assert!(
            library.list(Some(kind)).count() > 0,
            "no shipped {kind} ingredient"
        );
    }
    let recipes: Vec<_> = library.list(Some(Kind::Recipe)).collect();
    assert!(recipes.len() >= 12, "only {} recipes", recipes.len());
    let mut groups = std::collections::BTreeSet::new();
    for recipe in &recipes {
        let Body::Recipe(r) = &recipe.body else {
            unreachable!()
        };
        groups.extend(r.groups.iter().copied());
        assert!(!r.keywords.is_empty(), "{} has no keywords", r.name);
    }
    for group in [
        Group::Security,
        Group::Communication,
        Group::Data,
        Group::Intelligence,
        Group::Workflow,
    ] {
        assert!(
            groups.contains(&group),
            "no recipe uses the {group:?} group"
        );
    }
    assert_eq!(BASE_CLASSES.len(), 20);
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

const GOOD_TESTING: &str = r#"
kind = "testing"
name = "my-edge-cases"
description = "mine"
[[cases]]
generator = "empty-input"
outcome = "rejected"
"#;

#[test]
fn malformed_ingredient_files_are_reported_with_file_and_field_while_the_others_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path();
    write(root, "good.toml", GOOD_TESTING);
    // One mistake per file, each of a different sort.
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown-field.toml",
            "kind = \"model\"\nname = \"m1\"\nprovider = \"openai\"\nmodel = \"x\"\ncolour = \"red\"\n[price]\ninput_per_1k = 0.1\noutput_per_1k = 0.1\n",
            "unknown field `colour`",
        ),
        (
            "wrong-type.toml",
            "kind = \"model\"\nname = \"m2\"\nprovider = \"openai\"\nmodel = \"x\"\n[parameters]\ntemperature = \"hot\"\n[price]\ninput_per_1k = 0.1\noutput_per_1k = 0.1\n",
            "field `parameters.temperature`",
        ),
        (
            "out-of-range.toml",
            "kind = \"model\"\nname = \"m3\"\nprovider = \"openai\"\nmodel = \"x\"\n[parameters]\ntemperature = 5.0\n[price]\ninput_per_1k = 0.1\noutput_per_1k = 0.1\n",
            "field `parameters.temperature`: 5 is out of range",
        ),
        (
            "missing-field.toml",
            "kind = \"data-flow\"\nname = \"d1\"\nengine = \"workflow\"\n",
            "field `steps`",
        ),
        (
            "bad-kind.toml",
            "kind = \"sauce\"\nname = \"s\"\n",
            "field `kind`",
        ),
        (
            "syntax.toml",
            "kind = \"model\"\nname = \"broken\nmodel = 1\n",
            "not valid TOML at line 2",
        ),
        (
            "cycle.toml",
            "kind = \"data-flow\"\nname = \"d2\"\nengine = \"workflow\"\n[[steps]]\nid = \"a\"\nmethod = \"x\"\nafter = [\"b\"]\n[[steps]]\nid = \"b\"\nmethod = \"y\"\nafter = [\"a\"]\n",
            "field `steps`: the steps form a cycle",
        ),
        (
            "bad-step.toml",
            "kind = \"data-flow\"\nname = \"d3\"\nengine = \"data-processor\"\n[[steps]]\nwindow = { field = \"x\", size = 3, op = \"median\", as = \"m\" }\n",
            "field `steps[0].window.op`",
        ),
        (
            "bad-condition.toml",
            "kind = \"security\"\nname = \"sec\"\n[[policies]]\nid = \"p\"\neffect = \"allow\"\nsubjects = [\"*\"]\nactions = [\"*\"]\nresources = [\"*\"]\nwhen = { field = \"a\", op = \"almost\", value = 1 }\n",
            "field `policies[0].when.op`",
        ),
        (
            "bad-route.toml",
            "kind = \"api\"\nname = \"a1\"\n[[routes]]\nmethod = \"GET\"\npath = \"/x\"\nconnector = \"nowhere\"\n",
            "field `routes[0].connector`",
        ),
    ];
    for (file, text, _) in cases {
        write(root, file, text);
    }
    // A recipe referring to an ingredient that does not exist, one whose example does not match its
    // schema, one with a parameter default of the wrong type, and one whose template does not parse.
    let recipe = |name: &str, extra: &str, example_input: &str| {
        format!(
            r#"kind = "recipe"
name = "{name}"
title = "t"
base_classes = ["BaseValidator"]
groups = ["security"]
function_type = "validator"
uses = ["my-edge-cases"{extra}]
input_schema = {{ type = "object", required = ["x"], properties = {{ x = {{ type = "number" }} }} }}
output_schema = {{ type = "object" }}
[[parameters]]
name = "p"
type = "integer"
default = 3
[[examples]]
name = "e"
input = {example_input}
expect = {{}}
"#
        )
    };
    let template = |dir: &str, main: &str| {
        write(
            root,
            &format!("{dir}/template/klf.toml.jinja"),
            "name = \"{{ name }}\"\nversion = \"1.0.0\"\ntype = \"t\"\n",
        );
        write(root, &format!("{dir}/template/main.js.jinja"), main);
    };
    let main_js = "{% include \"klf/prelude.js\" %}\nimport { BaseValidator } from \"klf:base\";\nexport default class X extends BaseValidator {\n  async execute(input) { return {}; }\n{% include \"klf/tests.js\" %}\n}\n";
    write(
        root,
        "r1/recipe.toml",
        &recipe("r-missing", ", \"no-such-thing\"", "{ x = 1 }"),
    );
    template("r1", main_js);
    write(
        root,
        "r2/recipe.toml",
        &recipe("r-bad-example", "", "{ x = \"one\" }"),
    );
    template("r2", main_js);
    write(
        root,
        "r3/recipe.toml",
        &recipe("r-bad-default", "", "{ x = 1 }").replace("default = 3", "default = \"three\""),
    );
    template("r3", main_js);
    write(
        root,
        "r4/recipe.toml",
        &recipe("r-bad-template", "", "{ x = 1 }"),
    );
    template("r4", "{% if %}\n");
    write(root, "r5/recipe.toml", &recipe("r-good", "", "{ x = 1 }"));
    template("r5", main_js);

    let library = Library::load(&[root.to_path_buf()]);
    let errors: Vec<String> = library.errors().iter().map(|e| e.to_string()).collect();
    let find = |file: &str| {
        errors
            .iter()
            .find(|e| e.contains(file))
            .unwrap_or_else(|| panic!("no error for {file} in {errors:#?}"))
            .clone()
    };
    for (file, _, needle) in cases {
        let error = find(file);
        assert!(
            error.contains(&root.join(file).display().to_string()),
            "{error} should name the file"
        );
        assert!(error.contains(needle), "{error} should contain {needle:?}");
    }
    let error = find("r1/recipe.toml");
    assert!(
        error.contains("field `uses[1]`") && error.contains("no-such-thing"),
        "{error}"
    );
    let error = find("r2/recipe.toml");
    assert!(error.contains("field `examples[0].input`"), "{error}");
    let error = find("r3/recipe.toml");
    assert!(error.contains("field `parameters[0].default`"), "{error}");
    let error = find("r4/template/main.js.jinja");
    assert!(
        error.contains("syntax error") || error.contains("line 1"),
        "{error}"
    );
    assert_eq!(errors.len(), cases.len() + 4, "{errors:#?}");
    // The good ones load, next to every shipped ingredient.
    assert!(library.get("my-edge-cases").is_some());
    assert!(library.get("r-good").is_some());
    assert!(library.get("market-analysis").is_some());
    assert_eq!(
        library.len(),
        Library::shipped().len() + 2,
        "everything else still loads"
    );
    // And the good recipe renders into a package that loads.
    let rendered = render(
        &library,
        &RenderRequest {
            recipe: "r-good".into(),
            name: Some("my-validator".into()),
            set: BTreeMap::from([("p".to_string(), json!("7"))]),
        },
    )
    .expect("render");
    assert_eq!(rendered.params["p"], json!(7));
    rendered.package().expect("package");
    let bad = render(
        &library,
        &RenderRequest {
            recipe: "r-good".into(),
            name: None,
            set: BTreeMap::from([("q".to_string(), json!(1))]),
        },
    )
    .expect_err("unknown parameter");
    assert!(bad.to_string().contains("unknown parameter `q`"), "{bad}");
}

#[test]
fn a_user_folder_adds_ingredients_and_overrides_shipped_ones() {
    let first = tempfile::tempdir().expect("tmp");
    let second = tempfile::tempdir().expect("tmp");
    write(first.path(), "testing/mine.toml", GOOD_TESTING);
    let stronger = "kind = \"model\"\nname = \"market-signal-logistic\"\ndescription = \"my weights\"\nprovider = \"local\"\nmodel = \"logistic\"\n[local]\nkind = \"logistic\"\nbias = 0.0\nthreshold = 0.5\n[local.weights]\nmomentum = 20.0\ntrend = 10.0\nvolume_surge = 0.1\nvolatility = -5.0\n";
    write(first.path(), "models/override.toml", stronger);
    write(
        second.path(),
        "again.toml",
        &stronger.replace("my weights", "second folder wins"),
    );
    let library = Library::load(&[first.path().to_path_buf(), second.path().to_path_buf()]);
    assert!(library.errors().is_empty(), "{:#?}", library.errors());
    let mine = library.get("my-edge-cases").expect("added");
    assert!(matches!(mine.origin, Origin::User { .. }));
    let model = library.get("market-signal-logistic").expect("model");
    assert_eq!(model.description, "second folder wins");
    assert_eq!(
        model.overrides.as_deref(),
        Some(
            first
                .path()
                .join("models/override.toml")
                .display()
                .to_string()
                .as_str()
        )
    );
    let only_first = Library::load(&[first.path().to_path_buf()]);
    let model = only_first.get("market-signal-logistic").expect("model");
    assert_eq!(
        model.overrides.as_deref(),
        Some("ingredients/models/market-signal-logistic.toml")
    );
    // Recipes render with the overriding model.
    let rendered = render(
        &only_first,
        &RenderRequest {
            recipe: "market-analysis".into(),
            ..Default::default()
        },
    )
    .expect("render");
    assert!(
        rendered.files["klf.toml"].contains("momentum = 20.0"),
        "{}",
        rendered.files["klf.toml"]
    );
    // A folder that does not exist is reported, not fatal.
    let missing = Library::load(&[first.path().join("nope")]);
    assert_eq!(missing.errors().len(), 1);
    assert_eq!(missing.len(), Library::shipped().len());
}

// ---------------------------------------------------------------------------------------------
// Every recipe on a real mesh

const ECHO: &str = "echo";

fn echo_package() -> Package {
    Package::from_parts(
        format!("name = \"{ECHO}\"\nversion = \"1.0.0\"\ntype = \"system\"\nentry = \"native:echo\"\nidempotent = true\n"),
        String::new(),
        Vec::new(),
    )
    .expect("echo package")
}

/// Parameters that name other functions all point at the echo function.
fn settings_for(library: &Library, recipe: &str) -> BTreeMap<String, Value> {
    let (_, r) = library.recipe(recipe).expect("recipe");
    r.parameters
        .iter()
        .filter(|p| p.kind == klf_actors::ingredients::kinds::ParamType::Function)
        .map(|p| (p.name.clone(), json!(ECHO)))
        .collect()
}

async fn call(node: &Node, function: &str, input: Value) -> Result<Value, String> {
    node.invoke(InvokeRequest::new(function, input, Duration::from_secs(10)))
        .await
        .map(|o| o.output)
        .map_err(|e| format!("{}: {}", e.kind.as_str(), e.message))
}

/// A hand-written input for each recipe and what its answer must be.
async fn check(recipe: &str, node: &Node) -> Result<(), String> {
    let ensure = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
    match recipe {
        "market-analysis" => {
            // Two weeks of two symbols: one climbing steadily on rising volume, one sliding.
            let mut series = Vec::new();
            for day in 0..14 {
                let date = format!("2024-05-{:02}", day + 1);
                series.push(json!({"date": date, "symbol": "UPCO", "close": 50.0 + 1.2 * day as f64, "volume": 1000 + 50 * day}));
                series.push(json!({"date": date, "symbol": "DOWN", "close": 90.0 - 1.5 * day as f64 + if day % 2 == 0 { 0.8 } else { -0.8 }, "volume": 800}));
            }
            let out = call(node, recipe, json!({"series": series, "top": 2})).await?;
            let ops = out["opportunities"].as_array().ok_or("no opportunities")?;
            ensure(ops.len() == 2 && out["analyzed"] == 2, format!("{out}"))?;
            ensure(
                ops[0]["symbol"] == "UPCO" && ops[0]["signal"] == "buy",
                format!("UPCO should rank first as a buy: {out}"),
            )?;
            ensure(
                ops[1]["symbol"] == "DOWN" && ops[1]["signal"] == "avoid",
                format!("DOWN should be avoided: {out}"),
            )?;
            let forecast = ops[0]["forecast_next"].as_f64().unwrap_or_default();
            ensure(
                (forecast - (50.0 + 1.2 * 14.0)).abs() < 0.01,
                format!("UPCO's next close follows its line: {forecast}"),
            )?;
            ensure(
                ops[0]["reasons"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|s| s.as_str().is_some_and(|s| s.contains("uptrend")))
                }),
                format!("{out}"),
            )
        }
        "metric-anomalies" => {
            let mut points: Vec<Value> = (0..30).map(|i| json!({"value": 100 + (i % 3)})).collect();
            points[20] = json!({"value": 400});
            let out = call(node, recipe, json!({"points": points, "window": 10})).await?;
            ensure(
                out["count"] == 1
                    && out["anomalies"][0]["index"] == 20
                    && out["anomalies"][0]["direction"] == "spike",
                format!("{out}"),
            )
        }
        "record-cleaning" => {
            let out = call(
                node,
                recipe,
                json!({"records": [
                    {"id": "a", "email": " X@Y.COM ", "age": "30"},
                    {"id": "b", "email": "broken"},
                ]}),
            )
            .await?;
            ensure(
                out["clean"][0]["email"] == "x@y.com" && out["clean"][0]["age"] == 30,
                format!("{out}"),
            )?;
            ensure(
                out["rejected"][0]["index"] == 1
                    && out["summary"] == json!({"total": 2, "clean": 1, "rejected": 1}),
                format!("{out}"),
            )
        }
        "csv-to-json" => {
            let out = call(
                node,
                recipe,
                json!({"csv": "sku,qty\nA-1,3\nB-2,5\n", "types": {"qty": "number"}}),
            )
            .await?;
            ensure(
                out == json!({"columns": ["sku", "qty"], "count": 2, "records": [{"sku": "A-1", "qty": 3}, {"sku": "B-2", "qty": 5}]}),
                format!("{out}"),
            )
        }
        "rule-decisions" => {
            let out = call(
                node,
                recipe,
                json!({"facts": {"amount": 12000, "customer_orders": 10, "country": "FR"}}),
            )
            .await?;
            ensure(
                out["decision"] == "review" && out["matched"] == json!(["very-large"]),
                format!("{out}"),
            )
        }
        "online-forecast" => {
            call(node, recipe, json!({"op": "reset"})).await?;
            call(node, recipe, json!({"op": "learn", "samples": [{"x": 0, "y": 1}, {"x": 1, "y": 3}, {"x": 2, "y": 5}]})).await?;
            let out = call(node, recipe, json!({"op": "predict", "x": 5})).await?;
            ensure(out == json!({"prediction": 11}), format!("{out}"))
        }
        "token-check" => {
            let out = call(node, recipe, json!({"headers": {"Authorization": "Bearer tok-alice-0001"}, "action": "write", "resource": "orders/1"})).await?;
            ensure(
                out["allowed"] == true && out["subject"] == "alice",
                format!("{out}"),
            )?;
            let out = call(node, recipe, json!({"headers": {"authorization": "Bearer tok-bob-0002"}, "action": "write", "resource": "orders/1"})).await?;
            ensure(
                out["allowed"] == false && out["authenticated"] == true,
                format!("{out}"),
            )?;
            let out = call(
                node,
                recipe,
                json!({"headers": {}, "action": "read", "resource": "reports/x"}),
            )
            .await?;
            ensure(
                out["allowed"] == false && out["authenticated"] == false,
                format!("{out}"),
            )
        }
        "field-encryption" => {
            let record = json!({"id": 7, "ssn": "987-65-4321", "email": "z@example.com", "card": {"number": "5500000000000004"}});
            let encrypted =
                call(node, recipe, json!({"op": "encrypt", "records": [record]})).await?;
            let sealed = &encrypted["records"][0];
            ensure(
                sealed["id"] == 7
                    && sealed["ssn"].is_object()
                    && !sealed.to_string().contains("987-65-4321")
                    && !sealed.to_string().contains("5500000000000004"),
                format!("{encrypted}"),
            )?;
            let back = call(node, recipe, json!({"op": "decrypt", "records": [sealed]})).await?;
            ensure(back["records"][0] == record, format!("{back}"))
        }
        "fan-out-fan-in" => {
            let items: Vec<Value> = (1..=20).map(|i| json!({"value": i})).collect();
            let out = call(node, recipe, json!({"items": items})).await?;
            ensure(
                out == json!({"ok": 20, "failed": 0, "total": 210, "errors": []}),
                format!("{out}"),
            )
        }
        "rate-limited-call" => {
            let mut ok = 0;
            let mut limited = 0;
            for i in 0..40 {
                match call(node, recipe, json!({"payload": {"n": i}})).await {
                    Ok(out) => {
                        ensure(out["result"] == json!({"n": i}), format!("{out}"))?;
                        ok += 1;
                    }
                    Err(e) if e.contains("RateLimited") || e.contains("rate") => limited += 1,
                    Err(e) => return Err(e),
                }
            }
            ensure(
                ok >= 1 && limited >= 1,
                format!("{ok} passed and {limited} were rate limited out of 40 quick calls"),
            )
        }
        "webhook-router" => {
            let out = call(node, recipe, json!({"method": "POST", "path": "/webhooks/stripe", "body": {"id": "evt-x1", "type": "payment.failed", "payload": {"amount": 5}}})).await?;
            ensure(
                out["status"] == 200
                    && out["body"]["handled"] == 1
                    && out["body"]["source"] == "stripe",
                format!("{out}"),
            )?;
            let out = call(node, recipe, json!({"method": "DELETE", "path": "/health"})).await?;
            ensure(out["status"] == 405, format!("{out}"))
        }
        "scheduled-report" => {
            call(node, recipe, json!({"op": "reset"})).await?;
            call(node, recipe, json!({"op": "record", "samples": [{"metric": "cpu", "value": 0.5, "at": 1}, {"metric": "cpu", "value": 0.7, "at": 2}]})).await?;
            let out = call(node, recipe, json!({"op": "deliver"})).await?;
            ensure(
                out["delivered"] == true && out["answer"]["report"]["metrics"][0]["avg"] == 0.6,
                format!("{out}"),
            )?;
            let scheduled = call(node, recipe, json!({"op": "schedule", "every_ms": 150})).await?;
            let id = scheduled["id"]
                .as_str()
                .ok_or(format!("{scheduled}"))?
                .to_string();
            let ran = wait_until(Duration::from_secs(5), || async {
                call(node, recipe, json!({"op": "schedules"}))
                    .await
                    .is_ok_and(|s| {
                        s["schedules"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|x| x["runs"].as_u64().unwrap_or(0) >= 2))
                    })
            })
            .await;
            call(node, recipe, json!({"op": "unschedule", "id": id})).await?;
            ensure(ran, "the schedule should have run twice within 5 s".into())
        }
        "order-workflow" => {
            call(node, recipe, json!({"op": "remove", "id": "o-77"})).await?;
            call(node, recipe, json!({"op": "create", "id": "o-77", "order": {"items": [{"sku": "pen", "qty": 3}], "total": 4.5}})).await?;
            let paid = call(node, recipe, json!({"op": "pay", "id": "o-77"})).await?;
            ensure(
                paid["state"] == "paid" && paid["fulfilment"]["payment"]["charged"] == 4.5,
                format!("{paid}"),
            )?;
            let refused = call(node, recipe, json!({"op": "pay", "id": "o-77"})).await;
            ensure(
                refused.is_err(),
                format!("paying twice must fail: {refused:?}"),
            )?;
            let cancelled = call(node, recipe, json!({"op": "cancel", "id": "o-77"})).await?;
            ensure(cancelled["state"] == "cancelled", format!("{cancelled}"))
        }
        other => Err(format!("no hand-written check for recipe {other}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipe_renders_deploys_passes_its_own_tests_and_answers_from_the_other_node() {
    let began = Instant::now();
    let library = Library::shipped();
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    // The secrets the recipes' own tests need, on every node.
    for recipe in library.list(Some(Kind::Recipe)) {
        let Body::Recipe(r) = &recipe.body else {
            continue;
        };
        for (name, content) in &r.fixtures.secrets {
            for i in 0..mesh.nodes.len() {
                let dir = mesh.dir.path().join(format!("node{i}")).join("secrets");
                std::fs::create_dir_all(&dir).expect("secrets dir");
                std::fs::write(dir.join(name), content).expect("secret");
            }
        }
    }
    mesh.nodes[0]
        .publish(echo_package(), 2, "admin")
        .await
        .expect("echo");
    let names: Vec<String> = library
        .list(Some(Kind::Recipe))
        .map(|r| r.name.clone())
        .collect();
    let mut failures = Vec::new();
    for name in &names {
        let started = Instant::now();
        let rendered = match render(
            &library,
            &RenderRequest {
                recipe: name.clone(),
                name: None,
                set: settings_for(&library, name),
            },
        ) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: render: {e}"));
                continue;
            }
        };
        let package = match rendered.package() {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name}: package: {e}"));
                continue;
            }
        };
        if let Err(e) = mesh.nodes[0].publish(package, 1, "admin").await {
            failures.push(format!("{name}: deploy: {e}"));
            continue;
        }
        let everywhere = wait_until(Duration::from_secs(5), || async {
            mesh.nodes
                .iter()
                .all(|n| n.catalog().deployment(name).is_some())
        })
        .await;
        assert!(everywhere, "{name} should reach both nodes");
        // Its own tests, through the test handle, on the node that hosts it.
        let ids: Vec<String> = mesh
            .nodes
            .iter()
            .map(|n| n.identity().node_id.clone())
            .collect();
        let host = klf_actors::placement::hosts(name, ids.iter().map(String::as_str), 1)
            .first()
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (hosting, other) = if mesh.nodes[0].identity().node_id == host {
            (0, 1)
        } else {
            (1, 0)
        };
        // Make sure the instance is up (the first call starts it), then test the hosted instance.
        let _ = wait_until(Duration::from_secs(5), || async {
            mesh.nodes[hosting].router().instances().get(name).is_some()
        })
        .await;
        match mesh.nodes[hosting]
            .router()
            .test_function(name, &semver::VersionReq::STAR)
            .await
        {
            Ok(run) if run.failed == 0 && run.passed > 0 => {}
            Ok(run) => {
                let failed: Vec<&Value> =
                    run.results.iter().filter(|r| r["passed"] != true).collect();
                failures.push(format!(
                    "{name}: {} of {} own tests failed: {}",
                    run.failed,
                    run.passed + run.failed,
                    serde_json::to_string_pretty(&failed).unwrap_or_default()
                ));
            }
            Err(e) => failures.push(format!(
                "{name}: test run: {}: {}",
                e.kind.as_str(),
                e.message
            )),
        }
        // A hand-written input, invoked from the node that does not host it.
        if let Err(e) = check(name, &mesh.nodes[other]).await {
            failures.push(format!(
                "{name}: hand-written check from the other node: {e}"
            ));
        }
        eprintln!("{name}: {:?}", started.elapsed());
    }
    eprintln!("{} recipes in {:?}", names.len(), began.elapsed());
    mesh.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_without_tests_or_unknown_is_answered_clearly_by_the_test_handle() {
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    let error = mesh.nodes[0]
        .router()
        .test_function("nothing-here", &semver::VersionReq::STAR)
        .await
        .expect_err("unknown");
    assert_eq!(error.kind, InvokeErrorKind::UnknownFunction);
    mesh.nodes[0]
        .publish(echo_package(), 1, "admin")
        .await
        .expect("echo");
    let run = mesh.nodes[0]
        .router()
        .test_function(ECHO, &semver::VersionReq::STAR)
        .await
        .expect("native functions have no tests");
    assert_eq!((run.passed, run.failed), (0, 0));
    mesh.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The command line

#[test]
fn the_ingredients_commands_list_show_render_and_the_rendered_package_deploys_and_tests() {
    let work = tempfile::tempdir().expect("tmp");
    let user = work.path().join("mine");
    write(&user, "t.toml", GOOD_TESTING);
    write(&user, "broken.toml", "kind = \"testing\"\nname = \"x\"\n");
    let user_s = user.to_string_lossy().into_owned();

    // Without a node: the shipped ingredients plus --ingredients.
    let (ok, stdout, stderr) = klf_run(&["ingredients", "ls", "--ingredients", &user_s]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("market-analysis") && stdout.contains("my-edge-cases"),
        "{stdout}"
    );
    assert!(
        stdout.contains("did not load")
            && stdout.contains("broken.toml")
            && stdout.contains("field `cases`"),
        "{stdout}"
    );
    let (ok, stdout, _) = klf_run(&["ingredients", "ls", "--kind", "recipe", "--json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&stdout).expect("json");
    assert!(
        listed["ingredients"]
            .as_array()
            .is_some_and(|l| l.len() >= 12 && l.iter().all(|i| i["kind"] == "recipe"))
    );
    let (ok, stdout, _) = klf_run(&["ingredients", "show", "market-analysis"]);
    assert!(
        ok && stdout.contains("BasePredictor") && stdout.contains("main.js.jinja"),
        "{stdout}"
    );
    let (ok, _, stderr) = klf_run(&["ingredients", "show", "no-such-ingredient"]);
    assert!(
        !ok && stderr.contains("no ingredient named no-such-ingredient"),
        "{stderr}"
    );
    let (ok, _, stderr) = klf_run(&[
        "ingredients",
        "render",
        "fan-out-fan-in",
        "--out",
        &work.path().join("x").to_string_lossy(),
    ]);
    assert!(
        !ok && stderr.contains("parameter `worker` must be set"),
        "{stderr}"
    );

    // With a node: render through its API, deploy, run the package's own tests.
    let mut mesh = ProcessMesh::new().expect("tmp");
    mesh.init("n1").expect("n1");
    let data = mesh.nodes[0].data.to_string_lossy().into_owned();
    let out_dir = work.path().join("csv");
    let out_s = out_dir.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = klf_run(&[
        "ingredients",
        "render",
        "csv-to-json",
        "--out",
        &out_s,
        "--set",
        "delimiter=;",
        "--name",
        "my-csv",
        "--data",
        &data,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("klf fn deploy"), "{stdout}");
    for file in [
        "klf.toml",
        "main.js",
        "schema/input.json",
        "schema/output.json",
        "examples/people.json",
    ] {
        assert!(out_dir.join(file).is_file(), "{file} missing");
    }
    let manifest = std::fs::read_to_string(out_dir.join("klf.toml")).expect("manifest");
    assert!(
        manifest.contains("name = \"my-csv\"") && manifest.contains("delimiter = \";\""),
        "{manifest}"
    );
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &out_s, "--data", &data]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = klf_run(&["fn", "test", "my-csv", "--data", &data]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    let (ok, stdout, _) = klf_run(&["fn", "test", "my-csv", "--data", &data, "--json"]);
    assert!(ok);
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert!(report["passed"].as_u64().unwrap_or(0) >= 3, "{report}");
    // A package whose tests fail exits non-zero and names the failing case.
    let failing = work.path().join("failing");
    write(
        &failing,
        "klf.toml",
        "name = \"failing\"\nversion = \"1.0.0\"\ntype = \"t\"\n",
    );
    write(
        &failing,
        "main.js",
        "import { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction {\n  static tests = [{ name: \"doubles\", input: 2, expect: 4 }];\n  async execute(x) { return x + 1; }\n}\n",
    );
    let (ok, _, stderr) = klf_run(&["fn", "deploy", &failing.to_string_lossy(), "--data", &data]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = klf_run(&["fn", "test", "failing", "--data", &data]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("FAILED doubles") && stderr.contains("1 test(s) of failing failed"),
        "{stdout}\n{stderr}"
    );
    // The API lists the node's ingredients.
    let (ok, stdout, stderr) = klf_run(&["ingredients", "ls", "--data", &data, "--json"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("market-analysis"), "{stdout}");
    let (ok, _, stderr) = klf_run(&["ingredients", "show", "nope", "--data", &data]);
    assert!(!ok && stderr.contains("404"), "{stderr}");
}
