//! What a recipe's tests expect from a package rendered with given parameter values.
//!
//! A recipe's examples are written for some parameter values, and their exact outputs are only
//! known there: a window of 4 finds other anomalies than a window of 5. So an example's `expect`
//! (or `error`) is used exactly only at the values it declares (`params`, the defaults for the
//! others) — whatever the values of the parameters it names in `unaffected_by`. At other values the
//! example still runs, as a property check: its output must meet the output schema, the recipe's
//! `output_properties` and the example's own `properties`, which the recipe states for every
//! in-range value. An `error` example stays a test at other values only when the input schema
//! refuses its input (the function refuses it before any parameter plays a part); otherwise what
//! the function does with it depends on values the recipe says nothing about, so it is left out
//! rather than guessed.
//!
//! Properties are JSON Schemas (the subset `validateSchema` of `klf:base` implements) in which a
//! string that is one `{{ expression }}` stands for the expression's value and any other string
//! with `{{ … }}` is rendered as text, both computed with minijinja from `params` (every
//! parameter's value) and `input` (the test's input) when the tests are written. What runs is then
//! a plain schema validation — in Rust for the Chef's acceptance tests, in JavaScript for the
//! package's own tests — and no expression is evaluated inside a function.
//!
//! The loader checks the properties against every exact output the recipe states
//! ([`check`]): a property that a known output breaks is a mistake in the recipe, found when it
//! loads rather than blamed on a function.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};

use super::kinds::{Recipe, RecipeExample, coerce};
use super::schema;

/// What one example's test expects at the requested parameter values.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Exactly this output (the example's own outcome holds).
    Output(Value),
    /// An error whose text contains this.
    Error(String),
    /// Any output the output schema accepts that also meets these properties (computed for the
    /// parameters and the input; `None` when the recipe states none).
    Meets(Option<Value>),
}

/// One example as a test at the requested parameter values.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleTest {
    pub name: String,
    pub input: Value,
    pub expected: Expected,
}

/// A property that cannot be computed for a test: the recipe, the field (a dotted path such as
/// `output_properties.properties.checked.const`) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("recipe {recipe}: field `{field}`: {message}")]
pub struct PropertyError {
    pub recipe: String,
    pub field: String,
    pub message: String,
}

/// The values an example's outcome holds for: its `params` over the defaults. A parameter without
/// a default that the example does not name is absent: the example does not pin it (its
/// description says what it assumes, such as a function that echoes its input).
pub fn example_params(recipe: &Recipe, example: &RecipeExample) -> BTreeMap<String, Value> {
    recipe
        .parameters
        .iter()
        .filter_map(|p| {
            let value = example.params.get(&p.name).or(p.default.as_ref())?;
            Some((
                p.name.clone(),
                coerce(p, value).unwrap_or_else(|_| value.clone()),
            ))
        })
        .collect()
}

/// Whether the example's own `expect` (or `error`) holds at `params`.
pub fn holds_at(
    recipe: &Recipe,
    example: &RecipeExample,
    params: &BTreeMap<String, Value>,
) -> bool {
    let own = example_params(recipe, example);
    recipe
        .parameters
        .iter()
        .filter(|p| !example.unaffected_by.contains(&p.name))
        .all(|p| match own.get(&p.name) {
            None => true,
            Some(mine) => params.get(&p.name).is_some_and(|asked| {
                same(mine, &coerce(p, asked).unwrap_or_else(|_| asked.clone()))
            }),
        })
}

/// JSON equality where numbers compare by value (`3` and `3.0` are the same window).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The recipe's examples as tests of a package rendered with `params` (every parameter's value,
/// defaults included), in the recipe's order (later examples may rely on state earlier ones left).
pub fn example_tests(
    recipe: &Recipe,
    params: &BTreeMap<String, Value>,
) -> Result<Vec<ExampleTest>, PropertyError> {
    let mut tests = Vec::new();
    for example in &recipe.examples {
        let expected = if holds_at(recipe, example, params) {
            match (&example.expect, &example.error) {
                (Some(expect), _) => Expected::Output(expect.clone()),
                (None, Some(error)) => Expected::Error(error.clone()),
                (None, None) => continue,
            }
        } else if example.expect.is_some() {
            Expected::Meets(properties_at(
                recipe,
                Some(example),
                params,
                &example.input,
            )?)
        } else if let Some(error) = &example.error
            && !schema::is_valid(&recipe.input_schema, &example.input)
        {
            Expected::Error(error.clone())
        } else {
            continue;
        };
        tests.push(ExampleTest {
            name: example.name.clone(),
            input: example.input.clone(),
            expected,
        });
    }
    Ok(tests)
}

/// The properties an output for `input` meets at `params`: the recipe's `output_properties` and,
/// for an example, its own `properties`, computed; `None` when there are none.
pub fn properties_at(
    recipe: &Recipe,
    example: Option<&RecipeExample>,
    params: &BTreeMap<String, Value>,
    input: &Value,
) -> Result<Option<Value>, PropertyError> {
    let mut all: Vec<Value> = computed(recipe, example, params, input)?
        .into_iter()
        .map(|(_, schema)| schema)
        .collect();
    Ok(match all.len() {
        0 => None,
        1 => all.pop(),
        _ => Some(json!({ "allOf": all })),
    })
}

/// `output_schema` with `properties` added: the schema a property check validates against.
pub fn with_properties(output_schema: &Value, properties: Option<Value>) -> Value {
    match properties {
        None => output_schema.clone(),
        Some(properties) => json!({ "allOf": [output_schema, properties] }),
    }
}

/// Each property schema that applies, with the field it comes from, computed for `params` and
/// `input`.
fn computed(
    recipe: &Recipe,
    example: Option<&RecipeExample>,
    params: &BTreeMap<String, Value>,
    input: &Value,
) -> Result<Vec<(String, Value)>, PropertyError> {
    let mut sources = Vec::new();
    if let Some(properties) = &recipe.output_properties {
        sources.push(("output_properties".to_string(), properties));
    }
    if let Some(example) = example
        && let Some(properties) = &example.properties
    {
        let index = recipe
            .examples
            .iter()
            .position(|e| e.name == example.name)
            .unwrap_or_default();
        sources.push((format!("examples[{index}].properties"), properties));
    }
    let env = environment();
    let context = minijinja::Value::from(minijinja::value::Serde(
        json!({ "params": params, "input": input }),
    ));
    sources
        .into_iter()
        .map(|(field, properties)| {
            compute(properties, &field, &env, &context)
                .map(|schema| (field, schema))
                .map_err(|(field, message)| PropertyError {
                    recipe: recipe.name.clone(),
                    field,
                    message,
                })
        })
        .collect()
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A typo in a property must be an error, not an empty value that weakens the check.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// `text` when it is exactly one `{{ expression }}`.
fn whole_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner)
}

/// `value` with its `{{ … }}` strings computed.
fn compute(
    value: &Value,
    at: &str,
    env: &Environment<'static>,
    context: &minijinja::Value,
) -> Result<Value, (String, String)> {
    let fail = |e: minijinja::Error| (at.to_string(), e.to_string());
    Ok(match value {
        Value::String(text) => {
            if let Some(expression) = whole_expression(text) {
                let result = env
                    .compile_expression(expression)
                    .and_then(|e| e.eval(context))
                    .map_err(fail)?;
                if result.is_undefined() {
                    return Err((
                        at.to_string(),
                        format!("`{}` is undefined", expression.trim()),
                    ));
                }
                serde_json::to_value(&result).map_err(|e| (at.to_string(), e.to_string()))?
            } else if text.contains("{{") {
                Value::String(env.render_str(text, context).map_err(fail)?)
            } else {
                value.clone()
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| compute(item, &format!("{at}[{i}]"), env, context))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| {
                    compute(item, &format!("{at}.{key}"), env, context).map(|v| (key.clone(), v))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// The checks of the parameter-aware parts of a recipe's examples, as `(field, message)`: `params`
/// and `unaffected_by` name parameters (with valid values); properties compute, at each example's
/// own values, into schemas `validateSchema` understands; and every exact output meets them.
pub fn check(recipe: &Recipe) -> Result<(), (String, String)> {
    let known = || {
        recipe
            .parameters
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, example) in recipe.examples.iter().enumerate() {
        let field = format!("examples[{i}]");
        for (name, value) in &example.params {
            let Some(p) = recipe.parameters.iter().find(|p| &p.name == name) else {
                return Err((
                    format!("{field}.params.{name}"),
                    format!("no parameter {name:?} (parameters: {})", known()),
                ));
            };
            coerce(p, value).map_err(|m| (format!("{field}.params.{name}"), m))?;
        }
        for (j, name) in example.unaffected_by.iter().enumerate() {
            let at = format!("{field}.unaffected_by[{j}]");
            if !recipe.parameters.iter().any(|p| &p.name == name) {
                return Err((
                    at,
                    format!("no parameter {name:?} (parameters: {})", known()),
                ));
            }
            if example.params.contains_key(name) {
                return Err((
                    at,
                    format!(
                        "the example names a value of {name} in `params`: it cannot also be unaffected by it"
                    ),
                ));
            }
        }
        let Some(expect) = &example.expect else {
            if example.properties.is_some() {
                return Err((
                    format!("{field}.properties"),
                    "only an example that expects an output has properties".into(),
                ));
            }
            continue;
        };
        let own = example_params(recipe, example);
        let computed = computed(recipe, Some(example), &own, &example.input).map_err(|e| {
            (
                e.field,
                format!(
                    "{} (computed with the input and parameters of {field})",
                    e.message
                ),
            )
        })?;
        for (source, properties) in computed {
            schema::check_schema(&properties).map_err(|(f, m)| (format!("{source}{f}"), m))?;
            schema::validate(&properties, expect).map_err(|m| {
                (
                    format!("{field}.expect"),
                    format!("does not meet {source}: {m}"),
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipe that keeps the `top` largest of `xs`.
    fn recipe() -> Recipe {
        let text = r#"
kind = "recipe"
name = "largest"
title = "The largest numbers"
base_classes = ["BaseDataProcessor"]
groups = ["data"]
function_type = "processor"
input_schema = { type = "object", required = ["xs"], properties = { xs = { type = "array", minItems = 1, items = { type = "number" } } } }
output_schema = { type = "object", required = ["largest"], properties = { largest = { type = "array" } } }
output_properties = { properties = { largest = { maxItems = "{{ [params.top, input.xs | length] | min }}" } } }
[[parameters]]
name = "top"
type = "integer"
default = 2
min = 1
max = 10
[[parameters]]
name = "workers"
type = "integer"
default = 1
min = 1
max = 8
[[examples]]
name = "three"
input = { xs = [3, 1, 2] }
expect = { largest = [3, 2] }
unaffected_by = ["workers"]
properties = { properties = { largest = { items = { enum = "{{ input.xs }}" } } } }
[[examples]]
name = "three-top-one"
input = { xs = [3, 1, 2] }
params = { top = 1 }
expect = { largest = [3] }
[[examples]]
name = "empty"
input = { xs = [] }
error = "InputError"
[[examples]]
name = "too-few"
input = { xs = [1] }
error = "fewer than top"
"#;
        match crate::ingredients::kinds::parse(text, "largest.toml") {
            Ok((_, crate::ingredients::Body::Recipe(recipe))) => *recipe,
            other => panic!("{other:?}"),
        }
    }

    fn params(top: i64, workers: i64) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("top".into(), json!(top)),
            ("workers".into(), json!(workers)),
        ])
    }

    #[test]
    fn exact_outcomes_are_used_only_at_the_values_they_hold_for() {
        let recipe = recipe();
        let at = |p: BTreeMap<String, Value>| example_tests(&recipe, &p).unwrap();
        // The defaults: the default-valued examples are exact; the one for top = 1 becomes a
        // property check; the schema-valid error example holds there.
        let tests = at(params(2, 1));
        assert_eq!(
            tests[0].expected,
            Expected::Output(json!({"largest": [3, 2]}))
        );
        assert!(matches!(tests[1].expected, Expected::Meets(Some(_))));
        assert_eq!(tests[2].expected, Expected::Error("InputError".into()));
        assert_eq!(tests[3].expected, Expected::Error("fewer than top".into()));
        // `workers` does not change the first example, but may change the others: the error
        // whose input the schema accepts is left out.
        let tests = at(params(2, 4));
        assert_eq!(
            tests[0].expected,
            Expected::Output(json!({"largest": [3, 2]}))
        );
        assert_eq!(tests.len(), 3);
        // `1.0` is the same top as `1`.
        let tests = at(BTreeMap::from([
            ("top".into(), json!(1.0)),
            ("workers".into(), json!(1)),
        ]));
        assert_eq!(tests[1].expected, Expected::Output(json!({"largest": [3]})));
        // Another top: property checks, computed for that top; the input the schema refuses is
        // refused at any top; the error that depends on top is left out.
        let tests = at(params(5, 1));
        let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["three", "three-top-one", "empty"]);
        let Expected::Meets(Some(schema)) = &tests[0].expected else {
            panic!("{:?}", tests[0]);
        };
        assert_eq!(
            schema,
            &json!({"allOf": [
                {"properties": {"largest": {"maxItems": 3}}},
                {"properties": {"largest": {"items": {"enum": [3, 1, 2]}}}},
            ]})
        );
        let full = with_properties(&recipe.output_schema, Some(schema.clone()));
        assert!(schema::is_valid(&full, &json!({"largest": [3, 2, 1]})));
        assert!(!schema::is_valid(&full, &json!({"largest": [3, 2, 1, 1]})));
        assert!(!schema::is_valid(&full, &json!({"largest": [7]})));
        assert!(!schema::is_valid(&full, &json!({"other": []})));
    }

    #[test]
    fn expressions_compute_values_and_text_and_refuse_what_is_undefined() {
        let env = environment();
        let context = minijinja::Value::from(minijinja::value::Serde(json!({
            "params": {"window": 4, "threshold": 3.0},
            "input": {"points": [1, 2, 3, 4, 5, 6]},
        })));
        let compute = |v: Value| compute(&v, "p", &env, &context);
        assert_eq!(
            compute(json!({"const": "{{ input.points | length - params.window }}"})).unwrap(),
            json!({"const": 2})
        );
        assert_eq!(
            compute(json!({"minimum": "{{ input.window | default(params.window) }}"})).unwrap(),
            json!({"minimum": 4})
        );
        assert_eq!(
            compute(json!({"pattern": "^at least {{ params.window }} points$"})).unwrap(),
            json!({"pattern": "^at least 4 points$"})
        );
        assert_eq!(
            compute(json!(["{{ params.threshold * -1 }}", 7, "plain"])).unwrap(),
            json!([-3.0, 7, "plain"])
        );
        let (field, message) = compute(json!({"a": [{"b": "{{ params.windw }}"}]})).unwrap_err();
        assert_eq!(field, "p.a[0].b");
        assert!(message.contains("undefined"), "{message}");
        assert!(compute(json!("{{ params.window + }}")).is_err());
    }

    #[test]
    fn the_loader_refuses_properties_that_a_stated_output_breaks_and_unknown_parameters() {
        let mut bad = recipe();
        bad.examples[0].expect = Some(json!({"largest": [3, 2, 1]}));
        let (field, message) = check(&bad).unwrap_err();
        assert_eq!(field, "examples[0].expect");
        assert!(message.contains("output_properties"), "{message}");

        let mut bad = recipe();
        bad.examples[1].params.insert("tpo".into(), json!(1));
        assert_eq!(check(&bad).unwrap_err().0, "examples[1].params.tpo");
        let mut bad = recipe();
        bad.examples[1].params.insert("top".into(), json!(50));
        let (field, message) = check(&bad).unwrap_err();
        assert_eq!(field, "examples[1].params.top");
        assert!(message.contains("above the maximum"), "{message}");
        let mut bad = recipe();
        bad.examples[1].unaffected_by.push("top".into());
        assert_eq!(check(&bad).unwrap_err().0, "examples[1].unaffected_by[0]");
        let mut bad = recipe();
        bad.output_properties =
            Some(json!({"properties": {"largest": {"maxItems": "{{ params.nope }}"}}}));
        let (field, _) = check(&bad).unwrap_err();
        assert_eq!(field, "output_properties.properties.largest.maxItems");
        let mut bad = recipe();
        bad.output_properties = Some(json!({"contains": {"const": 3}}));
        assert_eq!(check(&bad).unwrap_err().0, "output_properties.contains");
        let mut bad = recipe();
        bad.examples[2].properties = Some(json!({}));
        assert_eq!(check(&bad).unwrap_err().0, "examples[2].properties");
    }
}
