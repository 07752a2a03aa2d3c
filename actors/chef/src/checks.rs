//! The Code Validator's and the Test Generator's work: static analysis, package and compile
//! checks, dependencies against the registry, a sandboxed run; acceptance tests from the recipe's
//! examples, its testing templates and its schemas, and running them in a real sandbox.
//!
//! The acceptance tests are written from the requirement, before any code exists, and held by the
//! pipeline: the generator never sees them as editable files, so a repair cannot weaken them.

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::messages::{
    CaseResult, GeneratedCode, Problem, TechnicalRequirement, TestCase, TestResult,
    ValidationResult,
};
use crate::ingredients::edge_cases;
use crate::ingredients::expectations::{self, Expected};
use crate::ingredients::kinds::{Body, Outcome, Recipe};
use crate::ingredients::{Library, RenderedPackage, schema};
use klf_functions::analysis::{self, Severity};
use klf_functions::native::is_native;
use klf_functions::package::Package;
use klf_functions::sandbox::{
    self, CallMeta, Host, Instance, LogLevel, MemoryKv, SandboxError, ScheduleInfo, ScheduleRequest,
};
use klf_model::ModelRequest;
use klf_registry::{Catalog, DependencyError, Release};
use klf_router::instances::{function_code, sandbox_limits};

/// The package the code describes, loaded as `klf fn deploy` would.
pub fn package_of(code: &GeneratedCode) -> Result<Package, String> {
    RenderedPackage {
        name: code.function.clone(),
        version: code.version.clone(),
        recipe: code.recipe.clone(),
        files: code.files.clone(),
        params: BTreeMap::new(),
        fixtures: Default::default(),
    }
    .package()
    .map_err(|e| e.to_string())
}

fn problem(check: &str, message: impl Into<String>) -> Problem {
    Problem {
        check: check.into(),
        message: message.into(),
        line: None,
        column: None,
    }
}

/// A host for validation runs: no calls, an in-memory kv, the fixtures as secrets.
#[derive(Default)]
struct DryHost {
    kv: MemoryKv,
    secrets: BTreeMap<String, String>,
}

impl Host for DryHost {
    fn call(
        &self,
        target: String,
        _input: Value,
        _meta: CallMeta,
    ) -> BoxFuture<'static, Result<serde_json::Value, SandboxError>> {
        Box::pin(async move {
            Err(SandboxError::Host(format!(
                "ctx.call({target:?}) is not available while the code is validated"
            )))
        })
    }
    fn kv_get(&self, key: &str) -> Result<Option<Value>, SandboxError> {
        Ok(self.kv.get(key))
    }
    fn kv_put(&self, key: &str, value: Value) -> Result<(), SandboxError> {
        self.kv.put(key, value);
        Ok(())
    }
    fn kv_delete(&self, key: &str) -> Result<(), SandboxError> {
        self.kv.delete(key);
        Ok(())
    }
    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, SandboxError> {
        Ok(self.kv.list(prefix))
    }
    fn log(&self, _level: LogLevel, _message: &str) {}
    fn secret(&self, name: &str) -> Result<String, SandboxError> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| SandboxError::Secret(format!("secret {name:?} has no test fixture")))
    }
}

/// The real node host of a test run, with the recipe's test secrets in front of the node's.
struct TestHost {
    inner: Arc<dyn Host>,
    secrets: BTreeMap<String, String>,
}

impl Host for TestHost {
    fn call(
        &self,
        target: String,
        input: Value,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<serde_json::Value, SandboxError>> {
        self.inner.call(target, input, meta)
    }
    fn kv_get(&self, key: &str) -> Result<Option<Value>, SandboxError> {
        self.inner.kv_get(key)
    }
    fn kv_put(&self, key: &str, value: Value) -> Result<(), SandboxError> {
        self.inner.kv_put(key, value)
    }
    fn kv_delete(&self, key: &str) -> Result<(), SandboxError> {
        self.inner.kv_delete(key)
    }
    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, SandboxError> {
        self.inner.kv_list(prefix)
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message);
    }
    fn secret(&self, name: &str) -> Result<String, SandboxError> {
        match self.secrets.get(name) {
            Some(value) => Ok(value.clone()),
            None => self.inner.secret(name),
        }
    }
    fn model(
        &self,
        request: ModelRequest,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<klf_model::ModelReply, SandboxError>> {
        self.inner.model(request, meta)
    }
    fn schedule(&self, request: ScheduleRequest) -> Result<String, SandboxError> {
        self.inner.schedule(request)
    }
    fn unschedule(&self, id: &str) -> bool {
        self.inner.unschedule(id)
    }
    fn schedules(&self) -> Vec<ScheduleInfo> {
        self.inner.schedules()
    }
}

/// Every check of the Code Validator, in order; later checks run only when the earlier ones pass
/// (there is no point compiling code the parser rejects).
pub async fn validate(code: &GeneratedCode, catalog: &Catalog) -> ValidationResult {
    let mut result = ValidationResult {
        ok: false,
        problems: Vec::new(),
        checks: Vec::new(),
        warnings: Vec::new(),
    };
    let package = match package_of(code) {
        Ok(package) => package,
        Err(message) => {
            result.problems.push(problem("package", message));
            result.checks.push(("package".into(), false));
            return result;
        }
    };
    result.checks.push(("package".into(), true));
    if is_native(&package.manifest.entry) {
        result.problems.push(problem(
            "package",
            "generated code must be JavaScript, not a native built-in",
        ));
        return result;
    }

    let report = analysis::analyze(&package.manifest.entry, &package.source);
    for finding in &report.findings {
        let entry = Problem {
            check: "static".into(),
            message: format!("[{}] {}", finding.rule, finding.message),
            line: Some(finding.line),
            column: Some(finding.column),
        };
        match finding.severity {
            Severity::Error => result.problems.push(entry),
            Severity::Warning => result.warnings.push(entry),
        }
    }
    let static_ok = report.errors().next().is_none();
    result.checks.push(("static analysis".into(), static_ok));
    if !static_ok {
        return result;
    }

    let code_for_sandbox = function_code(&package.manifest, &package.source);
    let limits = sandbox_limits(&package.manifest);
    if let Err(error) = sandbox::check(&code_for_sandbox, limits).await {
        result.problems.push(problem("compile", error.to_string()));
        result.checks.push(("compile".into(), false));
        return result;
    }
    result.checks.push(("compile".into(), true));

    let mut dependencies_ok = true;
    for (name, range) in &package.manifest.dependencies {
        let deployed = catalog.deployment(name).is_some_and(|d| d.enabled);
        // The same resolution a deploy makes: yanked versions are skipped, and a range only
        // yanked versions match is refused with their reasons.
        match catalog.resolve_dependency(name, range, &package.manifest.id()) {
            Ok(_) if deployed => {}
            Ok(_) | Err(DependencyError::Missing { .. }) => {
                dependencies_ok = false;
                let matching = catalog
                    .versions(name)
                    .iter()
                    .any(|r| range.matches(&r.manifest.version));
                result.problems.push(problem(
                    "dependencies",
                    format!(
                        "depends on {name} {range}, which is not {} in the mesh; deploy it first",
                        if matching { "deployed" } else { "published" }
                    ),
                ));
            }
            Err(error) => {
                dependencies_ok = false;
                result
                    .problems
                    .push(problem("dependencies", error.to_string()));
            }
        }
    }
    result.checks.push(("dependencies".into(), dependencies_ok));
    if !dependencies_ok {
        return result;
    }

    let host = Arc::new(DryHost {
        secrets: code.fixtures.clone(),
        ..Default::default()
    });
    let sandboxed = async {
        let instance = Instance::start(code_for_sandbox, limits, host).await?;
        instance.validate().await
    }
    .await;
    match sandboxed {
        Ok(true) => result.checks.push(("sandboxed run".into(), true)),
        Ok(false) => {
            result.problems.push(problem(
                "sandbox",
                "the class does not implement execute(input)",
            ));
            result.checks.push(("sandboxed run".into(), false));
        }
        Err(error) => {
            result.problems.push(problem(
                "sandbox",
                format!("the module does not start: {error}"),
            ));
            result.checks.push(("sandboxed run".into(), false));
        }
    }
    result.ok = result.problems.is_empty();
    result
}

/// The acceptance tests of a requirement: the recipe's examples (exact outputs or errors), the
/// edge cases its testing templates generate from the input schema (rejected inputs must fail,
/// accepted ones must produce output the output schema accepts).
pub fn acceptance_tests(
    requirement: &TechnicalRequirement,
    library: &Library,
) -> Result<Vec<TestCase>, String> {
    // The examples (the recipe's, or a model-written requirement's own) and the testing templates
    // whose edge cases apply to the input schema.
    let (mut tests, templates): (Vec<TestCase>, Vec<&str>) = if requirement.is_freeform() {
        (
            crate::providers::freeform::example_tests(requirement),
            vec![FREEFORM_TESTING],
        )
    } else {
        let (_, recipe) = library
            .recipe(&requirement.recipe)
            .map_err(|e| e.to_string())?;
        (
            recipe_examples(recipe, requirement)?,
            recipe.uses.iter().map(String::as_str).collect(),
        )
    };
    let base = tests
        .iter()
        .find(|t| t.error.is_none())
        .map(|t| t.input.clone())
        .unwrap_or_else(edge_cases::empty_object);
    for used in templates {
        let Some(ingredient) = library.get(used) else {
            continue;
        };
        let Body::Testing(template) = &ingredient.body else {
            continue;
        };
        for case in edge_cases::generate(template, &requirement.input_schema, &base) {
            let rejected = matches!(case.outcome, Outcome::Rejected);
            let output_schema = (!rejected)
                .then(|| accepted_schema(requirement, library, &case.input))
                .transpose()?;
            tests.push(TestCase {
                name: format!("edge case: {}", case.name),
                origin: "edge-case".into(),
                input: case.input,
                expect: None,
                error: rejected.then(|| case.error.unwrap_or_default()),
                output_schema,
            });
        }
    }
    // Exact expectations must themselves satisfy the output schema: a test that contradicts the
    // schema is a broken recipe, not a failing function.
    for test in &tests {
        if let Some(expect) = &test.expect
            && let Err(message) = schema::validate(&requirement.output_schema, expect)
        {
            return Err(format!(
                "{}: the expected output does not match the output schema: {message}",
                test.name
            ));
        }
    }
    Ok(tests)
}

/// A recipe's examples as acceptance tests at the requirement's parameter values: exact where
/// the recipe knows the outcome for those values, otherwise a check against the output schema and
/// the recipe's properties (see [`expectations`]).
fn recipe_examples(
    recipe: &Recipe,
    requirement: &TechnicalRequirement,
) -> Result<Vec<TestCase>, String> {
    let examples =
        expectations::example_tests(recipe, &requirement.params).map_err(|e| e.to_string())?;
    Ok(examples
        .into_iter()
        .map(|example| {
            let (expect, error, output_schema) = match example.expected {
                Expected::Output(output) => (Some(output), None, None),
                Expected::Error(error) => (None, Some(error), None),
                Expected::Meets(properties) => (
                    None,
                    None,
                    Some(expectations::with_properties(
                        &requirement.output_schema,
                        properties,
                    )),
                ),
            };
            TestCase {
                name: format!("example: {}", example.name),
                origin: "example".into(),
                input: example.input,
                expect,
                error,
                output_schema,
            }
        })
        .collect())
}

/// What an accepted edge case's output must meet: the output schema, and for a recipe its
/// properties at the requirement's parameter values and this input.
fn accepted_schema(
    requirement: &TechnicalRequirement,
    library: &Library,
    input: &Value,
) -> Result<Value, String> {
    let properties = match library.recipe(&requirement.recipe) {
        Ok((_, recipe)) if !requirement.is_freeform() => {
            expectations::properties_at(recipe, None, &requirement.params, input)
                .map_err(|e| e.to_string())?
        }
        _ => None,
    };
    Ok(expectations::with_properties(
        &requirement.output_schema,
        properties,
    ))
}

/// The testing template whose edge cases a model-written function's input schema gets.
const FREEFORM_TESTING: &str = "input-edge-cases";

/// JSON text with object keys sorted, for comparing outputs.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            let inner: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 300 {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text
    }
}

/// Runs `tests` against `code` in a real sandbox whose host is this node's (calls route through
/// the mesh); the recipe's test secrets are served first. Key-value writes go to a namespace of
/// their own (`NAME--chef-test`), not the function's.
pub async fn run_tests(
    code: &GeneratedCode,
    tests: &[TestCase],
    node_host: impl Fn(&Release) -> Arc<dyn Host>,
) -> TestResult {
    let mut result = TestResult {
        passed: 0,
        failed: 0,
        cases: Vec::new(),
    };
    let package = match package_of(code) {
        Ok(package) => package,
        Err(message) => {
            result.failed = tests.len() as u32;
            result.cases.push(CaseResult {
                name: "package".into(),
                passed: false,
                feedback: Some(message.clone()),
                detail: Some(message),
            });
            return result;
        }
    };
    let namespace = format!("{}--chef-test", package.manifest.name);
    let release = Release::unpublished(&package.manifest, &namespace, "chef");
    let host = Arc::new(TestHost {
        inner: node_host(&release),
        secrets: code.fixtures.clone(),
    });
    let limits = sandbox_limits(&package.manifest);
    let instance = match Instance::start(
        function_code(&package.manifest, &package.source),
        limits,
        host,
    )
    .await
    {
        Ok(instance) => instance,
        Err(error) => {
            result.failed = tests.len() as u32;
            let message = format!("the function does not start: {error}");
            result.cases.push(CaseResult {
                name: "start".into(),
                passed: false,
                feedback: Some(message.clone()),
                detail: Some(message),
            });
            return result;
        }
    };
    for test in tests {
        let outcome = instance
            .execute(
                test.input.clone(),
                CallMeta::with_timeout(limits.timeout + Duration::from_secs(1)),
            )
            .await;
        // Each failure in two words: for a person (with what was expected) and for the code
        // generator (without it).
        let verdict: Result<(), (String, String)> = match (
            &outcome,
            &test.expect,
            &test.error,
            &test.output_schema,
        ) {
            (Ok(actual), Some(expect), _, _) => {
                if canonical(actual) == canonical(expect) {
                    Ok(())
                } else {
                    Err((
                        format!("expected {}, got {}", short(expect), short(actual)),
                        format!("the output {} is not the expected output", short(actual)),
                    ))
                }
            }
            (Ok(actual), None, Some(error), _) => Err((
                format!(
                    "expected an error containing {error:?}, got the output {}",
                    short(actual)
                ),
                format!(
                    "it returned {} but this input must be refused with an error",
                    short(actual)
                ),
            )),
            (Ok(actual), None, None, Some(schema)) => {
                // The schema may hold expected values (properties computed from the parameters):
                // the generator is told where and which check, not the value expected.
                schema::validate(schema, actual).map_err(|m| {
                    let hint = schema::violation(schema, actual).unwrap_or_default();
                    (
                        format!("the output does not match the output schema: {m}"),
                        format!("the output does not match what the tests require {hint}"),
                    )
                })
            }
            (Ok(_), None, None, None) => Ok(()),
            (Err(error), _, Some(wanted), _) => {
                let message = error.to_string();
                if message.contains(wanted.as_str()) {
                    Ok(())
                } else {
                    Err((
                        format!("expected an error containing {wanted:?}, got: {message}"),
                        format!(
                            "it failed with \"{message}\", which is not the error this input must give"
                        ),
                    ))
                }
            }
            (Err(error), _, None, _) => {
                let message = format!("failed: {error}");
                Err((message.clone(), message))
            }
        };
        match verdict {
            Ok(()) => {
                result.passed += 1;
                result.cases.push(CaseResult {
                    name: test.name.clone(),
                    passed: true,
                    detail: None,
                    feedback: None,
                });
            }
            Err((detail, feedback)) => {
                result.failed += 1;
                result.cases.push(CaseResult {
                    name: test.name.clone(),
                    passed: false,
                    detail: Some(detail),
                    feedback: Some(feedback),
                });
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use klf_functions::package::Manifest;
    use klf_registry::Yank;
    use klf_registry::catalog::{Deployment, Record, Versioned, deployment_key, yank_key};

    fn stamp(time: u64) -> uhlc::Timestamp {
        uhlc::Timestamp::new(uhlc::NTP64(time), uhlc::ID::try_from(1u8).unwrap())
    }

    fn code(dependencies: &str) -> GeneratedCode {
        GeneratedCode {
            function: "app".into(),
            version: "1.0.0".into(),
            recipe: "test".into(),
            files: BTreeMap::from([
                (
                    "klf.toml".into(),
                    format!(
                        "name = \"app\"\nversion = \"1.0.0\"\ntype = \"t\"\n\
                         capabilities = [\"call\"]\n[dependencies]\n{dependencies}"
                    ),
                ),
                (
                    "main.js".into(),
                    "import { BaseFunction } from \"klf:base\";\n\
                     export default class App extends BaseFunction {\n\
                     async execute(input) { return await this.ctx.call(\"lib\", input); }\n}\n"
                        .into(),
                ),
            ]),
            round: 0,
            fixtures: BTreeMap::new(),
        }
    }

    /// `lib@1.0.0` published and deployed, and yanked when `reason` is given.
    fn catalog(reason: Option<&str>) -> Catalog {
        let manifest = Manifest::parse(
            "name = \"lib\"\nversion = \"1.0.0\"\ntype = \"t\"\n",
            "klf.toml",
        )
        .unwrap();
        let version = manifest.version.clone();
        let mut catalog = Catalog::default();
        let release = Release::unpublished(&manifest, "lib", "admin");
        catalog.merge(
            release.key(),
            Versioned {
                stamp: stamp(1),
                record: Record::Release(Arc::new(release)),
            },
        );
        catalog.merge(
            deployment_key("lib"),
            Versioned {
                stamp: stamp(2),
                record: Record::Deployment(Deployment {
                    name: "lib".into(),
                    replicas: 1,
                    enabled: true,
                    version: None,
                }),
            },
        );
        if let Some(reason) = reason {
            catalog.merge(
                yank_key("lib", &version),
                Versioned {
                    stamp: stamp(3),
                    record: Record::Yank(Yank {
                        name: "lib".into(),
                        version,
                        reason: reason.into(),
                        by: "admin".into(),
                        yanked_unix_ms: 0,
                    }),
                },
            );
        }
        catalog
    }

    #[tokio::test]
    async fn the_chef_validator_refuses_a_dependency_whose_only_match_is_yanked() {
        let ok = validate(&code("lib = \"^1\""), &catalog(None)).await;
        assert!(ok.ok, "{:?}", ok.problems);
        let refused = validate(&code("lib = \"^1\""), &catalog(Some("wrong sums"))).await;
        assert!(!refused.ok);
        assert_eq!(refused.problems.len(), 1, "{:?}", refused.problems);
        assert_eq!(refused.problems[0].check, "dependencies");
        assert_eq!(
            refused.problems[0].message,
            "app@1.0.0 needs lib ^1, but every matching version is yanked: 1.0.0 (wrong sums)"
        );
        let missing = validate(&code("ghost = \"^1\""), &catalog(None)).await;
        assert!(
            missing.problems[0]
                .message
                .contains("which is not published in the mesh"),
            "{:?}",
            missing.problems
        );
    }
}
