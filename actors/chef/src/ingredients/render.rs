//! Rendering a recipe into a function package: the recipe's template folder (`klf.toml.jinja`,
//! `main.js.jinja`, …) through minijinja, plus `examples/*.json`, `schema/input.json`,
//! `schema/output.json`, and the package's own tests (the recipe's examples and the edge cases of
//! its testing ingredients) embedded in the class as `static tests`.
//!
//! Templates see: `name`, `version`, `type`, `recipe` (its metadata), `params` (defaults merged with
//! what was set, type-checked), `ingredients` (the used ingredients by name, as JSON),
//! `dependencies` (function-typed parameter values), `secrets` (secret-typed parameter values),
//! `input_schema`, `output_schema`; filters `tojson` and `toml` (a value as a TOML inline value);
//! and two snippets to include: `klf/prelude.js` (at the top of main.js) and `klf/tests.js` (in the
//! class body: schemas, tests, input validation in `onExecute`, accepted edge cases in `test()`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::edge_cases::generate;
use super::expectations::{self, Expected, PropertyError};
use super::kinds::{Body, Fixtures, Outcome, ParamType, Recipe, coerce};
use super::loader::{Library, LoadError};
use klf_functions::package::{Package, PackageError, is_valid_name};

/// Why a recipe did not render. Errors of the template engine, the package loader, JSON and the
/// file system are kept as the source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("unknown parameter `{name}` (parameters of {recipe}: {known})")]
    UnknownParameter {
        name: String,
        recipe: String,
        known: String,
    },
    #[error("parameter `{name}` must be set ({description})")]
    MissingParameter { name: String, description: String },
    #[error("parameter `{name}`: {message}")]
    Parameter { name: String, message: String },
    #[error("{0:?} is not a function name (1 to 64 of a-z, 0-9 and '-', starting with a letter)")]
    Name(String),
    /// A template that does not fit its recipe (the message says how).
    #[error("template {template}: {message}")]
    Template { template: String, message: String },
    /// A template the engine failed to render; `message` is its error with the template's
    /// location, the source is the engine's error.
    #[error("template {template}: {message}")]
    TemplateFailed {
        template: String,
        message: String,
        #[source]
        source: Arc<minijinja::Error>,
    },
    #[error("the rendered package is invalid: {0}")]
    Package(#[from] PackageError),
    /// A file of the package (an example, a schema) that cannot be written as JSON.
    #[error("{path}: cannot be written as JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("{path}: {source}")]
    Write {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("the tests cannot be written: {0}")]
    Expectation(#[from] PropertyError),
}

/// What to render.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenderRequest {
    pub recipe: String,
    /// The package's name (default: the recipe's).
    #[serde(default)]
    pub name: Option<String>,
    /// Parameter values; strings are parsed into the parameter's type (as `--set key=value`).
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
}

/// A rendered package: its files by path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedPackage {
    pub name: String,
    pub version: String,
    pub recipe: String,
    /// Path inside the package → content.
    pub files: BTreeMap<String, String>,
    /// The parameter values used.
    pub params: BTreeMap<String, Value>,
    /// Secrets the package's own tests need on the nodes that run them.
    pub fixtures: Fixtures,
}

impl RenderedPackage {
    /// Writes the files under `dir` (created).
    pub fn write_to(&self, dir: &Path) -> Result<(), RenderError> {
        for (path, content) in &self.files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RenderError::Write {
                    path: parent.display().to_string(),
                    source: Arc::new(e),
                })?;
            }
            std::fs::write(&target, content).map_err(|e| RenderError::Write {
                path: target.display().to_string(),
                source: Arc::new(e),
            })?;
        }
        Ok(())
    }

    /// The package, as `klf fn deploy` would load it from the written folder.
    pub fn package(&self) -> Result<Package, RenderError> {
        let manifest = self.files.get("klf.toml").cloned().unwrap_or_default();
        let parsed = klf_functions::package::Manifest::parse(&manifest, "klf.toml")?;
        let source = if klf_functions::native::is_native(&parsed.entry) {
            String::new()
        } else {
            self.files
                .get(&parsed.entry)
                .cloned()
                .ok_or_else(|| RenderError::Template {
                    template: parsed.entry.clone(),
                    message: "the templates produced no entry module".into(),
                })?
        };
        let examples = self
            .files
            .iter()
            .filter_map(|(path, text)| {
                let name = path.strip_prefix("examples/")?.strip_suffix(".json")?;
                Some((name.to_string(), text.clone()))
            })
            .collect();
        Ok(
            Package::from_parts(manifest, source, examples)?.with_schemas(
                self.files.get("schema/input.json").cloned(),
                self.files.get("schema/output.json").cloned(),
            )?,
        )
    }
}

const PRELUDE_JS: &str = r#"// Rendered by `klf ingredients render` from the recipe "{{ recipe.name }}": {{ recipe.title }}.
// Base classes: {{ recipe.base_classes | join(", ") }}.
import { validateSchema as __validateSchema, KlfInputError as __KlfInputError } from "klf:base";

// One test case run as a call runs (onExecute, execute; onError on a throw), as BaseFunction.test()
// runs one, plus the case it does not know: neither `expect` nor `error`, where the output must
// meet the output schema and the case's `properties` (a recipe's example at parameter values its
// exact output is not known for, or an accepted edge case).
const __klfCanonical = (value) =>
  JSON.stringify(value, (_key, inner) => {
    if (inner === null || typeof inner !== "object" || Array.isArray(inner)) return inner;
    const sorted = {};
    for (const name of Object.keys(inner).sort()) sorted[name] = inner[name];
    return sorted;
  });

async function __klfRunTest(target, testCase, ctx) {
  const name = testCase.name;
  const wantsError = typeof testCase.error === "string";
  let actual;
  try {
    await target.onExecute(testCase.input, ctx);
    actual = await target.execute(testCase.input, ctx);
  } catch (error) {
    try {
      await target.onError(error, ctx);
    } catch (_hookError) {
      // The test is about the first error.
    }
    const message =
      error instanceof Error ? `${error.name}: ${error.message}` : typeof error === "string" ? error : JSON.stringify(error);
    return wantsError && message.includes(testCase.error) ? { name, passed: true } : { name, passed: false, error: message };
  }
  if (wantsError) return { name, passed: false, expected: { error: testCase.error }, actual };
  if (Object.hasOwn(testCase, "expect")) {
    return __klfCanonical(actual) === __klfCanonical(testCase.expect)
      ? { name, passed: true }
      : { name, passed: false, expected: testCase.expect, actual };
  }
  const checks = [["the output schema", target.constructor.outputSchema], ["the recipe's properties", testCase.properties]];
  for (const [what, schema] of checks) {
    if (schema === undefined) continue;
    const { valid, errors } = __validateSchema(actual, schema, { root: "output" });
    if (!valid) {
      const why = errors.map((e) => `${e.path}: ${e.message}`).join("; ");
      return { name, passed: false, actual, error: `the output does not meet ${what}: ${why}` };
    }
  }
  return { name, passed: true };
}
"#;

const TESTS_JS: &str = r#"
  // Rendered by `klf ingredients render`: the recipe's schemas, its examples and the edge cases its
  // testing ingredients generate from the input schema. test() below runs `static tests` in order
  // (an exact output, an error, or an output that meets the output schema and the case's
  // properties), then the accepted edge cases, which must succeed with an output the output schema
  // and the recipe's properties accept.
  static inputSchema = {{ input_schema | tojson }};
  static outputSchema = {{ output_schema | tojson }};
  static tests = {{ tests | tojson }};
  static acceptedCases = {{ accepted | tojson }};

  // Every call's input is checked against the input schema before execute() runs.
  async onExecute(input, ctx) {
    await super.onExecute(input, ctx);
    const { valid, errors } = __validateSchema(input, this.constructor.inputSchema);
    if (!valid) {
      const first = errors[0] ?? { path: "input", message: "does not match the input schema" };
      throw new __KlfInputError(`${first.path}: ${first.message}`, { path: first.path });
    }
  }

  async test(ctx = this.ctx) {
    const results = [];
    for (const testCase of [...this.constructor.tests, ...this.constructor.acceptedCases]) {
      results.push(await __klfRunTest(this, testCase, ctx));
    }
    const passed = results.filter((r) => r.passed).length;
    return { passed, failed: results.length - passed, results };
  }
"#;

/// A value as a TOML inline value (`{ a = 1, b = [2, 3] }`), for klf.toml templates.
fn toml_filter(value: minijinja::Value) -> Result<String, minijinja::Error> {
    let bad = |m: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m);
    let json = serde_json::to_value(&value).map_err(|e| bad(e.to_string()).with_source(e))?;
    toml_inline(&json).map_err(bad)
}

fn toml_inline(value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::Null => return Err("TOML has no null".into()),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(toml_inline)
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        ),
        Value::Object(map) => {
            let parts = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| Ok(format!("{} = {}", toml_key(k), toml_inline(v)?)))
                .collect::<Result<Vec<_>, String>>()?;
            if parts.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", parts.join(", "))
            }
        }
    })
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

fn environment(recipe: &Recipe) -> Result<Environment<'static>, (String, String)> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("toml", toml_filter);
    let builtin = |name: &str, text: &str, env: &mut Environment<'static>| {
        env.add_template_owned(name.to_string(), text.to_string())
            .map_err(|e| (name.to_string(), describe(&e)))
    };
    builtin("klf/prelude.js", PRELUDE_JS, &mut env)?;
    builtin("klf/tests.js", TESTS_JS, &mut env)?;
    for (name, text) in &recipe.templates {
        if name.ends_with(".jinja") {
            env.add_template_owned(name.clone(), text.clone())
                .map_err(|e| (name.clone(), describe(&e)))?;
        }
    }
    Ok(env)
}

/// `value` as the pretty JSON text of the file `path`.
fn pretty_json(path: &str, value: &Value) -> Result<String, RenderError> {
    serde_json::to_string_pretty(value)
        .map(|text| text + "\n")
        .map_err(|source| RenderError::Json {
            path: path.to_string(),
            source: Arc::new(source),
        })
}

fn describe(e: &minijinja::Error) -> String {
    let mut message = e.to_string();
    if let Some(line) = e.line()
        && !message.contains("line")
    {
        message = format!("line {line}: {message}");
    }
    message
}

/// Compiles a recipe's templates (syntax only): `(template, message)` on failure.
pub fn check_templates(recipe: &Recipe) -> Result<(), (String, String)> {
    environment(recipe).map(|_| ())
}

/// The parameter values: defaults, overridden by `set` (type-checked); every parameter without a
/// default must be set.
fn parameters(
    recipe: &Recipe,
    set: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, RenderError> {
    for name in set.keys() {
        if !recipe.parameters.iter().any(|p| &p.name == name) {
            return Err(RenderError::UnknownParameter {
                name: name.clone(),
                recipe: recipe.name.clone(),
                known: if recipe.parameters.is_empty() {
                    "none".into()
                } else {
                    recipe
                        .parameters
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
    }
    let mut values = BTreeMap::new();
    for p in &recipe.parameters {
        let value = match (set.get(&p.name), &p.default) {
            (Some(v), _) | (None, Some(v)) => {
                coerce(p, v).map_err(|message| RenderError::Parameter {
                    name: p.name.clone(),
                    message,
                })?
            }
            (None, None) => {
                return Err(RenderError::MissingParameter {
                    name: p.name.clone(),
                    description: format!(
                        "{}: {}",
                        p.kind.as_str(),
                        if p.description.is_empty() {
                            "no default"
                        } else {
                            &p.description
                        }
                    ),
                });
            }
        };
        values.insert(p.name.clone(), value);
    }
    Ok(values)
}

/// The package's own tests at the parameter values it is rendered with: the recipe's examples
/// (exact where their outcome is known for these values, property checks elsewhere; see
/// [`expectations`]), then the edge cases of its testing ingredients (rejected ones in `static
/// tests`, accepted ones apart, each with the recipe's properties for its input).
fn tests(
    library: &Library,
    recipe: &Recipe,
    params: &BTreeMap<String, Value>,
) -> Result<(Vec<Value>, Vec<Value>), PropertyError> {
    let mut tests = Vec::new();
    for test in expectations::example_tests(recipe, params)? {
        let (name, input) = (test.name, test.input);
        tests.push(match test.expected {
            Expected::Output(expect) => json!({"name": name, "input": input, "expect": expect}),
            Expected::Error(error) => json!({"name": name, "input": input, "error": error}),
            Expected::Meets(None) => json!({"name": name, "input": input}),
            Expected::Meets(Some(properties)) => {
                json!({"name": name, "input": input, "properties": properties})
            }
        });
    }
    let mut accepted = Vec::new();
    let Some(base) = recipe.examples.iter().find(|e| e.expect.is_some()) else {
        return Ok((tests, accepted));
    };
    for used in &recipe.uses {
        if let Some(Body::Testing(template)) = library.get(used).map(|i| &i.body) {
            for case in generate(template, &recipe.input_schema, &base.input) {
                match case.outcome {
                    Outcome::Rejected => tests.push(json!({
                        "name": case.name, "input": case.input, "error": case.error,
                    })),
                    Outcome::Accepted => {
                        let mut test = json!({"name": case.name, "input": case.input});
                        if let Some(properties) =
                            expectations::properties_at(recipe, None, params, &case.input)?
                        {
                            test["properties"] = properties;
                        }
                        accepted.push(test);
                    }
                }
            }
        }
    }
    Ok((tests, accepted))
}

/// The recipe's test secrets under the names the package uses: a secret parameter given another
/// name than its default reads the same fixture under that name (the tests are about what the
/// function does with the secret, not about what it is called).
fn fixtures_for(recipe: &Recipe, params: &BTreeMap<String, Value>) -> Fixtures {
    let mut fixtures = recipe.fixtures.clone();
    for p in recipe
        .parameters
        .iter()
        .filter(|p| p.kind == ParamType::Secret)
    {
        let (Some(default), Some(chosen)) = (
            p.default.as_ref().and_then(Value::as_str),
            params.get(&p.name).and_then(Value::as_str),
        ) else {
            continue;
        };
        if default != chosen
            && let Some(content) = fixtures.secrets.remove(default)
        {
            fixtures.secrets.insert(chosen.to_string(), content);
        }
    }
    fixtures
}

/// Renders `request.recipe` from `library`.
pub fn render(library: &Library, request: &RenderRequest) -> Result<RenderedPackage, RenderError> {
    let (_, recipe) = library.recipe(&request.recipe)?;
    let name = request.name.clone().unwrap_or_else(|| recipe.name.clone());
    if !is_valid_name(&name) {
        return Err(RenderError::Name(name));
    }
    let params = parameters(recipe, &request.set)?;
    let of_type = |kind: ParamType| -> Vec<String> {
        let mut seen = BTreeSet::new();
        recipe
            .parameters
            .iter()
            .filter(|p| p.kind == kind)
            .filter_map(|p| params.get(&p.name)?.as_str().map(str::to_string))
            .filter(|v| seen.insert(v.clone()))
            .collect()
    };
    let ingredients: BTreeMap<&str, Value> = recipe
        .uses
        .iter()
        .filter_map(|u| Some((u.as_str(), library.get(u)?.body.to_json())))
        .collect();
    let (tests, accepted) = tests(library, recipe, &params)?;
    let context = json!({
        "name": name,
        "version": recipe.version.to_string(),
        "type": recipe.function_type,
        "recipe": {
            "name": recipe.name,
            "title": recipe.title,
            "description": recipe.description,
            "keywords": recipe.keywords,
            "base_classes": recipe.base_classes,
            "groups": recipe.groups,
            "baseline_hours": recipe.baseline_hours,
        },
        "params": params,
        "ingredients": ingredients,
        "dependencies": of_type(ParamType::Function),
        "secrets": of_type(ParamType::Secret),
        "input_schema": recipe.input_schema,
        "output_schema": recipe.output_schema,
        "tests": tests,
        "accepted": accepted,
    });
    let env = environment(recipe)
        .map_err(|(template, message)| RenderError::Template { template, message })?;
    let ctx = minijinja::Value::from(minijinja::value::Serde(&context));
    let mut files = BTreeMap::new();
    for (path, text) in &recipe.templates {
        match path.strip_suffix(".jinja") {
            Some(out) => {
                let rendered = env
                    .get_template(path)
                    .and_then(|t| t.render(&ctx))
                    .map_err(|e| RenderError::TemplateFailed {
                        template: path.clone(),
                        message: describe(&e),
                        source: Arc::new(e),
                    })?;
                files.insert(out.to_string(), rendered);
            }
            None => {
                files.insert(path.clone(), text.clone());
            }
        }
    }
    let json_files = recipe
        .examples
        .iter()
        .map(|ex| (format!("examples/{}.json", ex.name), &ex.input))
        .chain([
            ("schema/input.json".to_string(), &recipe.input_schema),
            ("schema/output.json".to_string(), &recipe.output_schema),
        ]);
    for (path, value) in json_files {
        let text = pretty_json(&path, value)?;
        files.insert(path, text);
    }
    let rendered = RenderedPackage {
        name: name.clone(),
        version: recipe.version.to_string(),
        recipe: recipe.name.clone(),
        files,
        fixtures: fixtures_for(recipe, &params),
        params,
    };
    // The result must be a package that deploys: a valid manifest of the requested name, an entry
    // module, the tests embedded.
    let package = rendered.package()?;
    if package.manifest.name != name {
        return Err(RenderError::Template {
            template: "klf.toml.jinja".into(),
            message: format!(
                "renders the name {:?} instead of {name:?} (use {{{{ name }}}})",
                package.manifest.name
            ),
        });
    }
    if !klf_functions::native::is_native(&package.manifest.entry)
        && !package.source.contains("static tests")
    {
        return Err(RenderError::Template {
            template: format!("{}.jinja", package.manifest.entry),
            message: "does not embed the tests: include \"klf/tests.js\" in the class body".into(),
        });
    }
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_inline_values_parse_back() {
        let value =
            json!({"a": 1, "b": [1.5, "x"], "c": {"d": true, "odd key": "q\"uote"}, "n": null});
        let text = format!("v = {}", toml_inline(&value).unwrap());
        let parsed: toml::Table = text.parse().unwrap();
        let back = serde_json::to_value(&parsed["v"]).unwrap();
        assert_eq!(
            back,
            json!({"a": 1, "b": [1.5, "x"], "c": {"d": true, "odd key": "q\"uote"}})
        );
    }
}
