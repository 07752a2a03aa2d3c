//! The API against a real node in this process: every route is called through HTTP and every
//! answer is checked against the OpenAPI document's schema for that route and status, with no
//! undocumented field allowed; and the body limits answer 413 in the error shape while the node
//! keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use klf_actors::LocalMesh;
use klf_actors::chef::Chef;
use klf_actors::functions::package::Package;
use klf_actors::node::DataDir;
use reqwest::Method;
use serde_json::{Value, json};

use super::types::{DeployRequest, PackageBody};
use super::{BodyLimits, MAX_BODY_BYTES, openapi};

/// One node of a one-node mesh, its Chef and an API served on a free loopback port.
struct Served {
    mesh: LocalMesh,
    chef: Arc<Chef>,
    token: String,
    http: reqwest::Client,
}

impl Served {
    async fn start() -> Self {
        let mesh = LocalMesh::start(1)
            .await
            .unwrap_or_else(|e| panic!("starting a node: {e}"));
        let (providers, _) = klf_actors::chef::providers::node_providers();
        let chef = Chef::start(mesh.kitchens[0].clone(), providers)
            .await
            .unwrap_or_else(|e| panic!("starting the chef: {e}"));
        let token = DataDir::new(mesh.dir.path().join("node0"))
            .admin_bearer()
            .unwrap_or_else(|e| panic!("the admin token: {e}"));
        Self {
            mesh,
            chef,
            token,
            http: reqwest::Client::new(),
        }
    }

    /// Serves the API with `limits` and returns its base URL.
    async fn serve(&self, limits: BodyLimits) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding the API: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("API address: {e}"));
        tokio::spawn(super::serve(
            listener,
            self.mesh.nodes[0].clone(),
            self.mesh.kitchens[0].clone(),
            Some(self.chef.clone()),
            limits,
            std::future::pending(),
        ));
        format!("http://{addr}")
    }

    /// One request: (status, content type, body).
    async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, String, Vec<u8>) {
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{path}: reading the answer: {e}"));
        (status, content_type, bytes.to_vec())
    }
}

fn json_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| panic!("encoding a request: {e}"))
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// The body `klf fn deploy` sends for the package in `examples/NAME`.
fn example(name: &str, replicas: u32) -> DeployRequest {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let package = Package::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    DeployRequest {
        package: PackageBody {
            manifest: package.manifest_text.clone(),
            source: package.source.clone(),
            examples: package
                .examples
                .iter()
                .map(|e| (e.name.clone(), e.input.to_string()))
                .collect(),
            input_schema: package.input_schema.clone(),
            output_schema: package.output_schema.clone(),
        },
        replicas,
        perf: Default::default(),
    }
}

/// The document's schemas, made strict: an object may hold no property its schema does not name.
struct Contract {
    doc: Value,
    components: Value,
}

impl Contract {
    fn new() -> Self {
        let doc = serde_json::to_value(openapi::document()).unwrap_or_default();
        let mut schemas = serde_json::Map::new();
        for (name, schema) in doc["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let mut whole = schema.clone();
            strict(&mut whole, false);
            // As an `allOf` branch, a schema cannot refuse what the other branches add.
            let mut branch = schema.clone();
            strict(&mut branch, true);
            schemas.insert(name.clone(), whole);
            schemas.insert(format!("{name}__branch"), branch);
        }
        Self {
            components: json!({ "schemas": schemas }),
            doc,
        }
    }

    /// Checks an answer against the schema the document gives `method path` for `status`.
    fn check(&self, method: &str, path: &str, status: u16, content_type: &str, body: &[u8]) {
        let operation = &self.doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let mut response = &operation["responses"][status.to_string()];
        if let Some(name) = response["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/responses/"))
        {
            response = &self.doc["components"]["responses"][name];
        }
        assert!(
            response.is_object(),
            "{method} {path}: status {status} is not documented; the answer was {}",
            String::from_utf8_lossy(body)
        );
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let documented = response["content"]
            .as_object()
            .and_then(|c| c.iter().find(|(k, _)| k.split(';').next() == Some(media)))
            .map(|(_, v)| v["schema"].clone());
        let Some(schema) = documented else {
            panic!("{method} {path} {status}: {content_type} is not documented: {response}");
        };
        let instances: Vec<Value> = match media {
            "application/json" => vec![parse(body)],
            "application/x-ndjson" => String::from_utf8_lossy(body)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| parse(l.as_bytes()))
                .collect(),
            _ => return,
        };
        let mut schema = schema;
        strict(&mut schema, false);
        let root = json!({ "allOf": [schema], "components": self.components });
        let validator = jsonschema::draft202012::new(&root).unwrap_or_else(|e| {
            panic!("{method} {path} {status}: the schema does not compile: {e}")
        });
        for instance in &instances {
            let errors: Vec<String> = validator
                .iter_errors(instance)
                .map(|e| format!("{e} (at {})", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{method} {path} {status}: the answer does not match the document:\n  {}\n{instance:#}",
                errors.join("\n  ")
            );
        }
    }
}

/// Forbids properties a schema does not name (`unevaluatedProperties: false`, which sees through
/// `allOf`), except at the top of an `allOf` branch; component references inside `allOf` are
/// pointed at the branch form.
fn strict(schema: &mut Value, branch: bool) {
    let Value::Object(map) = schema else {
        return;
    };
    let object = map.contains_key("properties") || map.contains_key("allOf");
    if object && !branch && !map.contains_key("additionalProperties") {
        map.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
    for (key, child) in map.iter_mut() {
        match key.as_str() {
            "properties" => {
                for property in child.as_object_mut().into_iter().flatten() {
                    strict(property.1, false);
                }
            }
            "allOf" => {
                for item in child.as_array_mut().into_iter().flatten() {
                    if let Some(Value::String(reference)) = item.get_mut("$ref") {
                        reference.push_str("__branch");
                    }
                    strict(item, true);
                }
            }
            "oneOf" | "anyOf" | "prefixItems" => {
                for item in child.as_array_mut().into_iter().flatten() {
                    strict(item, false);
                }
            }
            "items" | "additionalProperties" | "not" => strict(child, false),
            _ => {}
        }
    }
}

/// Invokes `function` until it answers 200 (placement takes a moment after a deploy).
async fn invoke_when_ready(served: &Served, base: &str, function: &str, input: &Value) -> Vec<u8> {
    let started = Instant::now();
    loop {
        let (status, _, body) = served
            .call(
                base,
                Method::POST,
                &format!("/v1/functions/{function}/invoke"),
                Some(json_bytes(input)),
            )
            .await;
        if status == 200 {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{function} never became invocable: {status} {}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_over_the_limit_gets_413_in_the_error_shape_and_the_node_keeps_serving() {
    let served = Served::start().await;
    let base = served.serve(BodyLimits::default()).await;
    let small = served.serve(BodyLimits { max_input: 1000 }).await;
    let (status, _, body) = served
        .call(
            &base,
            Method::POST,
            "/v1/functions",
            Some(json_bytes(&example("echo", 1))),
        )
        .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    invoke_when_ready(&served, &base, "echo", &json!({"x": 1})).await;

    // 3 MB: over the default (and largest) input limit of 1 MiB.
    let big = json_bytes(&json!({ "data": "x".repeat(3_000_000) }));
    let (status, content_type, body) = served
        .call(
            &base,
            Method::POST,
            "/v1/functions/echo/invoke",
            Some(big.clone()),
        )
        .await;
    let error = parse(&body);
    assert_eq!(
        (status, content_type.as_str()),
        (413, "application/json"),
        "{error}"
    );
    assert_eq!(error["error"]["code"], "input_too_large", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("1048576 bytes (1 MiB)") && message.contains("--max-input"),
        "the message states the limit and the flag: {message}"
    );
    Contract::new().check(
        "post",
        "/v1/functions/{target}/invoke",
        status,
        &content_type,
        &body,
    );

    // A node started with a lower limit states its own.
    let (status, _, body) = served
        .call(
            &small,
            Method::POST,
            "/v1/functions/echo/invoke",
            Some(json_bytes(&json!({ "data": "x".repeat(2000) }))),
        )
        .await;
    let error = parse(&body);
    assert_eq!(status, 413, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit of 1000 bytes") && m.contains("--max-input")),
        "{error}"
    );
    let under = json!({ "data": "x".repeat(900) });
    let echoed = invoke_when_ready(&served, &small, "echo", &under).await;
    assert_eq!(parse(&echoed), under);

    // JSON bodies have the frame limit: a package over 16 MiB is refused in the same shape.
    let mut huge = example("echo", 1);
    huge.package.source = "x".repeat(MAX_BODY_BYTES + 1);
    let (status, _, body) = served
        .call(
            &base,
            Method::POST,
            "/v1/functions/validate",
            Some(json_bytes(&huge)),
        )
        .await;
    let error = parse(&body);
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "body_too_large", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("16777216 bytes (16 MiB)")),
        "{error}"
    );

    // The node keeps serving, on the same API.
    let echoed = invoke_when_ready(&served, &base, "echo", &json!({"after": true})).await;
    assert_eq!(parse(&echoed), json!({"after": true}));
    let (status, _, _) = served.call(&base, Method::GET, "/readyz", None).await;
    assert_eq!(status, 200);
}

/// Records the call spans of this test binary in the process's span ring, as `klf up` does.
fn install_span_ring() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let Ok(Some(provider)) = crate::telemetry::call_span_provider(1024) else {
        panic!("a ring of 1024 spans gives a provider");
    };
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("klf-test"))
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(klf_actors::router::trace::TARGET, tracing::Level::INFO),
        );
    // Only this test sets one; another binary's run of it would find it set already.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_openapi_document_says() {
    install_span_ring();
    let served = Served::start().await;
    let base = served.serve(BodyLimits::default()).await;
    let contract = Contract::new();
    let mut checked = std::collections::BTreeSet::new();
    // Calls `method path` (`route` is its template in the document) and checks the answer.
    macro_rules! check {
        ($method:ident, $route:expr, $path:expr, $body:expr, $status:expr) => {{
            let (status, content_type, body) = served
                .call(&base, Method::$method, &String::from($path), $body)
                .await;
            assert_eq!(
                status,
                $status,
                "{} {}: {}",
                stringify!($method),
                $path,
                String::from_utf8_lossy(&body)
            );
            let method = stringify!($method).to_lowercase();
            contract.check(&method, $route, status, &content_type, &body);
            checked.insert(format!("{method} {}", $route));
            body
        }};
    }

    check!(GET, "/healthz", "/healthz", None, 200);
    check!(GET, "/readyz", "/readyz", None, 200);
    check!(GET, "/metrics", "/metrics", None, 200);
    let served_doc = check!(GET, "/v1/openapi.json", "/v1/openapi.json", None, 200);
    assert_eq!(
        parse(&served_doc),
        contract.doc,
        "the served document is the generated one"
    );
    let anonymous = served
        .http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(
        anonymous.ok(),
        Some(200),
        "no token needed for the document"
    );
    check!(GET, "/v1/node", "/v1/node", None, 200);
    check!(GET, "/v1/members", "/v1/members", None, 200);
    let ttl = Some(json_bytes(&json!({"ttl_secs": 60})));
    check!(POST, "/v1/join-tokens", "/v1/join-tokens", ttl, 201);
    let zero = Some(json_bytes(&json!({"ttl_secs": 0})));
    check!(POST, "/v1/join-tokens", "/v1/join-tokens", zero, 400);

    // Functions: a dependency, a function that calls it, and hello.
    for name in ["series-cleaner", "moving-average", "hello"] {
        let body = Some(json_bytes(&example(name, 1)));
        check!(POST, "/v1/functions", "/v1/functions", body, 201);
    }
    let body = Some(json_bytes(&example("hello", 1)));
    let mut changed = example("hello", 1);
    changed.package.source.push_str("\n// changed\n");
    let conflict = Some(json_bytes(&changed));
    check!(POST, "/v1/functions", "/v1/functions", conflict, 409);
    check!(
        POST,
        "/v1/functions/validate",
        "/v1/functions/validate",
        body.clone(),
        200
    );
    let garbled = Some(b"{not json".to_vec());
    check!(
        POST,
        "/v1/functions/validate",
        "/v1/functions/validate",
        garbled,
        400
    );
    check!(GET, "/v1/functions", "/v1/functions", None, 200);
    check!(
        GET,
        "/v1/functions",
        "/v1/functions?type=greeter",
        None,
        200
    );
    let info = "/v1/functions/{target}";
    let described = check!(GET, info, "/v1/functions/moving-average", None, 200);
    assert!(
        parse(&described)["examples"]["rising"].is_object(),
        "{}",
        parse(&described)
    );
    check!(GET, info, "/v1/functions/ghost", None, 404);
    check!(GET, info, "/v1/functions/hello@%5E9", None, 404);
    let deps = "/v1/functions/{target}/dependencies";
    check!(
        GET,
        deps,
        "/v1/functions/moving-average/dependencies",
        None,
        200
    );

    let invoke = "/v1/functions/{target}/invoke";
    let output = invoke_when_ready(
        &served,
        &base,
        "moving-average",
        &json!({"xs": [1, 2, 3, 4]}),
    )
    .await;
    assert!(parse(&output).is_object());
    let input = Some(json_bytes(&json!({"name": "KLF"})));
    invoke_when_ready(&served, &base, "hello", &json!({"name": "KLF"})).await;
    check!(POST, invoke, "/v1/functions/hello/invoke", input, 200);
    check!(
        POST,
        invoke,
        "/v1/functions/ghost/invoke",
        Some(b"{}".to_vec()),
        404
    );
    check!(
        POST,
        invoke,
        "/v1/functions/hello/invoke",
        Some(b"{".to_vec()),
        400
    );
    check!(GET, "/v1/stats", "/v1/stats", None, 200);

    // Traces: the invoke above was recorded in this process's span ring (installed below, before
    // the node started), under the id its answer named.
    let traced = served
        .http
        .post(format!("{base}/v1/functions/hello/invoke"))
        .bearer_auth(&served.token)
        .json(&json!({"name": "trace"}))
        .send()
        .await
        .expect("invoke");
    let trace_id = traced
        .headers()
        .get("x-klf-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("an invoke answer names its trace");
    let trace = "/v1/traces/{trace_id}";
    check!(GET, trace, format!("/v1/traces/{trace_id}"), None, 200);
    check!(GET, trace, "/v1/traces/not-a-trace", None, 400);
    check!(
        GET,
        trace,
        format!("/v1/traces/{}", "0f".repeat(16)),
        None,
        404
    );
    check!(
        GET,
        "/v1/traces",
        "/v1/traces?limit=5&function=hello",
        None,
        200
    );
    check!(GET, "/v1/traces", "/v1/traces?errors=maybe", None, 400);
    check!(
        GET,
        "/v1/stats",
        "/v1/stats?function=hello&local=true",
        None,
        200
    );
    check!(GET, "/v1/stats", "/v1/stats?local=maybe", None, 400);

    // A second version of hello, and a rollback to the first.
    let mut v2 = example("hello", 1);
    v2.package.manifest = v2
        .package
        .manifest
        .replace("version = \"1.0.0\"", "version = \"2.0.0\"");
    check!(
        POST,
        "/v1/functions",
        "/v1/functions",
        Some(json_bytes(&v2)),
        201
    );
    let rollback = "/v1/functions/{name}/rollback";
    let to_v1 = Some(json_bytes(&json!({"version": "1.0.0"})));
    check!(POST, rollback, "/v1/functions/hello/rollback", to_v1, 200);
    let to_v9 = Some(json_bytes(&json!({"version": "9.0.0"})));
    check!(POST, rollback, "/v1/functions/hello/rollback", to_v9, 404);
    // A yank: moving-average still reaches the yanked series-cleaner, and the audit says so.
    let yank = "/v1/functions/{name}/versions/{version}/yank";
    let why = Some(json_bytes(&json!({"reason": "drops negative numbers"})));
    let yanked = check!(
        POST,
        yank,
        "/v1/functions/series-cleaner/versions/1.0.0/yank",
        why.clone(),
        200
    );
    assert_eq!(parse(&yanked)["id"], "series-cleaner@1.0.0");
    check!(
        POST,
        yank,
        "/v1/functions/series-cleaner/versions/9.0.0/yank",
        why.clone(),
        404
    );
    check!(
        POST,
        yank,
        "/v1/functions/series-cleaner/versions/one/yank",
        why,
        400
    );
    let blank = Some(json_bytes(&json!({"reason": " "})));
    check!(
        POST,
        yank,
        "/v1/functions/series-cleaner/versions/1.0.0/yank",
        blank,
        400
    );
    let audit = check!(
        GET,
        "/v1/audit/dependencies",
        "/v1/audit/dependencies",
        None,
        200
    );
    assert_eq!(
        parse(&audit)[0]["function"],
        "moving-average@1.2.0",
        "{}",
        parse(&audit)
    );
    let remove = "/v1/functions/{target}";
    check!(DELETE, remove, "/v1/functions/hello@2.0.0", None, 200);
    check!(DELETE, remove, "/v1/functions/hello@two", None, 400);

    // Ingredients.
    check!(GET, "/v1/ingredients", "/v1/ingredients", None, 200);
    check!(
        GET,
        "/v1/ingredients",
        "/v1/ingredients?kind=recipe",
        None,
        200
    );
    check!(
        GET,
        "/v1/ingredients",
        "/v1/ingredients?kind=soup",
        None,
        400
    );
    let show = "/v1/ingredients/{name}";
    check!(GET, show, "/v1/ingredients/market-analysis", None, 200);
    check!(GET, show, "/v1/ingredients/ghost", None, 404);
    let render = "/v1/ingredients/{name}/render";
    check!(
        POST,
        render,
        "/v1/ingredients/market-analysis/render",
        None,
        200
    );
    let named = Some(json_bytes(&json!({"name": "markets"})));
    check!(
        POST,
        render,
        "/v1/ingredients/market-analysis/render",
        named,
        200
    );

    // The Chef: a request it builds and deploys, then that function's own tests; and one that no
    // recipe fits.
    let request = json!({"request": "Analyze market data and find opportunities", "deploy": true});
    let stream = check!(
        POST,
        "/v1/chef",
        "/v1/chef",
        Some(json_bytes(&request)),
        200
    );
    let text = String::from_utf8_lossy(&stream).into_owned();
    let last = text
        .lines()
        .last()
        .map(|l| parse(l.as_bytes()))
        .unwrap_or_default();
    assert_eq!(last["run"]["outcome"]["status"], "deployed", "{text}");
    let function = last["run"]["outcome"]["function"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let nothing = json!({"request": "Knit me a warm winter scarf"});
    let stream = check!(
        POST,
        "/v1/chef",
        "/v1/chef",
        Some(json_bytes(&nothing)),
        200
    );
    assert!(String::from_utf8_lossy(&stream).contains("no-match"));
    check!(
        POST,
        "/v1/chef",
        "/v1/chef",
        Some(json_bytes(&json!({"request": ""}))),
        400
    );
    let test = "/v1/functions/{target}/test";
    let run = check!(
        POST,
        test,
        format!("/v1/functions/{function}/test"),
        None,
        200
    );
    assert!(
        parse(&run)["passed"].as_u64().unwrap_or(0) > 0,
        "{}",
        parse(&run)
    );

    check!(GET, "/v1/roi", "/v1/roi", None, 200);
    check!(
        GET,
        "/v1/roi/{name}",
        format!("/v1/roi/{function}"),
        None,
        200
    );
    check!(GET, "/v1/roi/{name}", "/v1/roi/ghost", None, 404);

    let secret = check!(
        PUT,
        "/v1/secrets/{name}",
        "/v1/secrets/api-key",
        Some(json_bytes(&json!({"value": "s3cret"}))),
        200
    );
    assert!(
        !String::from_utf8_lossy(&secret).contains("s3cret"),
        "a secret's value is never answered back"
    );
    check!(
        PUT,
        "/v1/secrets/{name}",
        "/v1/secrets/..%2Fescape",
        Some(json_bytes(&json!({"value": "x"}))),
        400
    );

    // Refusals every secured route shares.
    let (status, content_type, body) = {
        let response = served
            .http
            .get(format!("{base}/v1/node"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (
            status,
            content_type,
            response.bytes().await.unwrap_or_default().to_vec(),
        )
    };
    assert_eq!(status, 401);
    contract.check("get", "/v1/node", status, &content_type, &body);

    // Every documented operation was called.
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in contract.doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            documented.insert(format!("{method} {path}"));
        }
    }
    assert_eq!(checked, documented, "every documented route is exercised");
}
