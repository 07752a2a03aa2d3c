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
"#;

const TESTS_JS: &str = r#"
  // Rendered by `klf ingredients render`: the recipe's schemas, its examples and the edge cases its
  // testing ingredients generate from the input schema. BaseFunction.test() runs `static tests`;
  // test() below adds the accepted edge cases, which must succeed with an output the output schema
  // accepts.
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
    const report = await super.test(ctx);
    for (const testCase of this.constructor.acceptedCases) {
      try {
        await this.onExecute(testCase.input, ctx);
        const actual = await this.execute(testCase.input, ctx);
        const { valid, errors } = __validateSchema(actual, this.constructor.outputSchema);
        report.results.push(
          valid
            ? { name: testCase.name, passed: true }
            : {
                name: testCase.name,
                passed: false,
                actual,
                error: `the output does not match the output schema: ${errors
                  .map((e) => `${e.path}: ${e.message}`)
                  .join("; ")}`,
              },
        );
      } catch (error) {
        report.results.push({ name: testCase.name, passed: false, error: `${error.name}: ${error.message}` });
      }
    }
    report.passed = report.results.filter((r) => r.passed).length;
    report.failed = report.results.length - report.passed;
    return report;
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

/// The package's own tests: the recipe's examples, then the edge cases of its testing ingredients
/// (rejected ones in `static tests`, accepted ones apart).
fn tests(library: &Library, recipe: &Recipe) -> (Vec<Value>, Vec<Value>) {
    let mut tests = Vec::new();
    for ex in &recipe.examples {
        match (&ex.expect, &ex.error) {
            (Some(expect), _) => {
                tests.push(json!({"name": ex.name, "input": ex.input, "expect": expect}))
            }
            (None, Some(error)) => {
                tests.push(json!({"name": ex.name, "input": ex.input, "error": error}))
            }
            (None, None) => {}
        }
    }
    let mut accepted = Vec::new();
    let Some(base) = recipe.examples.iter().find(|e| e.expect.is_some()) else {
        return (tests, accepted);
    };
    for used in &recipe.uses {
        if let Some(Body::Testing(template)) = library.get(used).map(|i| &i.body) {
            for case in generate(template, &recipe.input_schema, &base.input) {
                match case.outcome {
                    Outcome::Rejected => tests.push(json!({
                        "name": case.name, "input": case.input, "error": case.error,
                    })),
                    Outcome::Accepted => {
                        accepted.push(json!({"name": case.name, "input": case.input}))
                    }
                }
            }
        }
    }
    (tests, accepted)
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
    let (tests, accepted) = tests(library, recipe);
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
        params,
        fixtures: recipe.fixtures.clone(),
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
