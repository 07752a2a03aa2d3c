//! Functions a model writes itself, with no recipe: what each agent asks the model, and how its
//! answer is checked before anything is believed.
//!
//! Three exchanges, each its own agent's:
//! - the Requirement Interpreter writes a [`TechnicalRequirement`]: name, type, description,
//!   input and output JSON Schemas, 3–8 examples with their expected outputs or errors,
//!   capabilities, dependencies on deployed functions, limits and a latency budget;
//! - the Test Generator writes acceptance tests from that requirement alone, before code exists;
//! - the Code Generator writes `klf.toml` and `main.js` against the package contract, prompted
//!   with the `klf:base` reference generated from the library (`klf_functions::sandbox::
//!   BASE_REFERENCE`) and shipped recipes as examples. It is shown the requirement's example
//!   *inputs* but never an expected output; in a repair it sees its previous package and what
//!   failed.
//!
//! Everything here is pure: prompts are built from data, answers are checked into typed values or
//! a problem the model is sent back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Deployed;
use super::model::parse_object;
use crate::ingredients::{Library, RenderRequest, render, schema};
use crate::messages::{
    Attempt, GeneratedCode, RequirementExample, RequirementLimits, TechnicalRequirement, TestCase,
};
use klf_functions::package::{CAPABILITIES, Manifest, is_valid_name};

/// Examples a requirement must have.
const EXAMPLES: std::ops::RangeInclusive<usize> = 3..=8;
/// Tests the test writer may add.
const WRITTEN_TESTS: std::ops::RangeInclusive<usize> = 1..=12;
/// Recipes shown to the code generator as examples of the package contract (small ones).
const EXAMPLE_RECIPES: [&str; 2] = ["csv-to-json", "rule-decisions"];
/// The version of a new function.
pub const FIRST_VERSION: &str = "1.0.0";

/// The shape of the requirement answer.
pub fn requirement_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "refuse": { "type": "string" },
            "name": { "type": "string" },
            "type": { "type": "string" },
            "goal": { "type": "string" },
            "description": { "type": "string" },
            "input_schema": { "type": "object" },
            "output_schema": { "type": "object" },
            "examples": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "input"],
                    "properties": {
                        "name": { "type": "string" },
                        "input": {},
                        "output": {},
                        "error": { "type": "string" }
                    }
                }
            },
            "capabilities": { "type": "array", "items": { "type": "string" } },
            "dependencies": { "type": "object", "additionalProperties": { "type": "string" } },
            "limits": {
                "type": "object",
                "properties": {
                    "memory_mb": { "type": "integer" },
                    "timeout_ms": { "type": "integer" },
                    "latency_budget_ms": { "type": "integer" }
                }
            }
        }
    })
}

/// The system prompt of the requirement exchange.
pub fn requirement_prompt() -> String {
    format!(
        "You turn a user's request into the technical requirement of one serverless function of \
         the KLF mesh: a JavaScript class that takes one JSON input and returns one JSON output.\n\
         Answer with only a JSON object:\n\
         {{\"name\": \"lowercase-words\", \"type\": \"a kind such as data-processor\", \"goal\": \
         \"one line\", \"description\": \"what it does, in one or two sentences\", \
         \"input_schema\": JSON Schema, \"output_schema\": JSON Schema, \"examples\": [{{\"name\", \
         \"input\", \"output\"}} or {{\"name\", \"input\", \"error\": \"text the error message \
         contains\"}}], \"capabilities\": [], \"dependencies\": {{}}, \"limits\": \
         {{\"memory_mb\": 32, \"timeout_ms\": 1000, \"latency_budget_ms\": 50}}}}\n\
         or {{\"refuse\": \"why\"}} when the request is not something such a function can do.\n\
         Rules:\n\
         - name: 1 to 64 characters of a-z, 0-9 and '-', starting with a letter.\n\
         - Schemas use only type, properties, required, items, enum, const, minimum, maximum, \
         minLength, maxLength, minItems, maxItems, additionalProperties, anyOf, oneOf, \
         description.\n\
         - {} to {} examples, each with exactly one of output (exactly what a correct function \
         returns) or error; every output must satisfy the output schema. Include at least one \
         invalid input with its error.\n\
         - capabilities: only what the function needs, from {}. Most need none.\n\
         - dependencies: only functions from the deployed list below that it must call \
         (name → semver range such as \"^1\"), usually none.\n\
         - limits: memory_mb 8 to 256, timeout_ms 10 to 30000, latency_budget_ms the p99 one \
         call may take.",
        EXAMPLES.start(),
        EXAMPLES.end(),
        CAPABILITIES.join(", ")
    )
}

/// The user message of the requirement exchange: the request and what is deployed.
pub fn requirement_message(request: &str, deployed: &[Deployed]) -> String {
    let mut message = format!("Request: {request}\n\nDeployed functions it may call:\n");
    if deployed.is_empty() {
        message.push_str("(none)\n");
    }
    for d in deployed {
        let _ = writeln!(
            message,
            "- {}@{} ({}): {}",
            d.name, d.version, d.kind, d.description
        );
    }
    message
}

/// What a checked requirement answer says.
#[derive(Debug, Clone, PartialEq)]
pub enum RequirementAnswer {
    Requirement(Box<TechnicalRequirement>),
    Refused(String),
}

/// A JSON Schema the sandbox's `validateSchema` (and the validator) can check.
fn checked_schema(object: &serde_json::Map<String, Value>, field: &str) -> Result<Value, String> {
    let schema = object
        .get(field)
        .cloned()
        .ok_or_else(|| format!("{field} is missing"))?;
    schema::check_schema(&schema).map_err(|(path, message)| format!("{field}{path}: {message}"))?;
    Ok(schema)
}

fn string_field(object: &serde_json::Map<String, Value>, field: &str) -> Option<String> {
    object
        .get(field)
        .and_then(Value::as_str)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One example or test: exactly one of an output (valid against the output schema) or an error;
/// an input that should succeed must be valid against the input schema.
fn checked_case(
    case: &Value,
    what: &str,
    input_schema: &Value,
    output_schema: &Value,
) -> Result<RequirementExample, String> {
    let name = case
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{what} has no name"))?
        .to_string();
    let input = case
        .get("input")
        .cloned()
        .ok_or_else(|| format!("{what} {name:?} has no input"))?;
    let output = case.get("output").cloned();
    let error = case
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string);
    match (&output, &error) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{what} {name:?} has both an output and an error; give exactly one"
            ));
        }
        (None, None) => {
            return Err(format!(
                "{what} {name:?} has neither an output nor an error; give exactly one"
            ));
        }
        (Some(output), None) => {
            schema::validate(input_schema, &input).map_err(|e| {
                format!("{what} {name:?}: its input does not match the input schema {e}")
            })?;
            schema::validate(output_schema, output).map_err(|e| {
                format!("{what} {name:?}: its output does not match the output schema {e}")
            })?;
        }
        (None, Some(error)) if error.trim().is_empty() => {
            return Err(format!(
                "{what} {name:?}: the error text is empty; give words its message contains"
            ));
        }
        (None, Some(_)) => {}
    }
    Ok(RequirementExample {
        name,
        input,
        output,
        error,
    })
}

/// Checks the requirement answer. `request` is the user's; `deployed` what may be depended on.
pub fn check_requirement(
    text: &str,
    request: &str,
    deployed: &[Deployed],
) -> Result<RequirementAnswer, String> {
    let object = parse_object(text, &requirement_schema())?;
    if let Some(reason) = string_field(&object, "refuse") {
        return Ok(RequirementAnswer::Refused(reason));
    }
    let name = string_field(&object, "name").ok_or("name is missing")?;
    if !is_valid_name(&name) {
        return Err(format!(
            "the name {name:?} is not valid: 1 to 64 characters of a-z, 0-9 and '-', starting with \
             a letter"
        ));
    }
    let input_schema = checked_schema(&object, "input_schema")?;
    let output_schema = checked_schema(&object, "output_schema")?;
    let cases = object
        .get("examples")
        .and_then(Value::as_array)
        .ok_or("examples is missing")?;
    if !EXAMPLES.contains(&cases.len()) {
        return Err(format!(
            "give {} to {} examples, not {}",
            EXAMPLES.start(),
            EXAMPLES.end(),
            cases.len()
        ));
    }
    let mut examples = Vec::new();
    let mut names = BTreeSet::new();
    for case in cases {
        let example = checked_case(case, "example", &input_schema, &output_schema)?;
        if !names.insert(example.name.clone()) {
            return Err(format!("two examples are named {:?}", example.name));
        }
        examples.push(example);
    }
    if examples.iter().all(|e| e.error.is_some()) {
        return Err("every example expects an error; give some that succeed".into());
    }
    let capabilities: Vec<String> = object
        .get("capabilities")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(unknown) = capabilities
        .iter()
        .find(|c| !CAPABILITIES.contains(&c.as_str()))
    {
        return Err(format!(
            "capability {unknown:?} does not exist; capabilities are {}",
            CAPABILITIES.join(", ")
        ));
    }
    let mut dependencies = BTreeMap::new();
    if let Some(Value::Object(given)) = object.get("dependencies") {
        for (dependency, range) in given {
            if !deployed.iter().any(|d| &d.name == dependency) {
                return Err(format!(
                    "dependency {dependency:?} is not a deployed function; depend only on: {}",
                    if deployed.is_empty() {
                        "(none are deployed)".to_string()
                    } else {
                        deployed
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
            let range = range.as_str().unwrap_or_default();
            semver::VersionReq::parse(range).map_err(|e| {
                format!("dependency {dependency:?}: {range:?} is not a semver range ({e})")
            })?;
            dependencies.insert(dependency.clone(), range.to_string());
        }
    }
    if !dependencies.is_empty() && !capabilities.iter().any(|c| c == "call") {
        return Err("a function with dependencies needs the \"call\" capability".into());
    }
    let limit = |field: &str, range: std::ops::RangeInclusive<u64>, default: u64| match object
        .get("limits")
        .and_then(|l| l.get(field))
    {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value.as_u64().filter(|v| range.contains(v)).ok_or_else(|| {
            format!(
                "limits.{field} must be an integer from {} to {}",
                range.start(),
                range.end()
            )
        }),
    };
    let limits = RequirementLimits {
        memory_mb: limit("memory_mb", 8..=256, 32)?,
        timeout_ms: limit("timeout_ms", 10..=30_000, 1000)?,
        latency_budget_ms: match object
            .get("limits")
            .and_then(|l| l.get("latency_budget_ms"))
        {
            None | Some(Value::Null) => None,
            Some(_) => Some(limit("latency_budget_ms", 1..=30_000, 0)?),
        },
    };
    let goal = string_field(&object, "goal").unwrap_or_else(|| request.to_string());
    Ok(RequirementAnswer::Requirement(Box::new(
        TechnicalRequirement {
            request: request.to_string(),
            goal: goal.clone(),
            recipe: String::new(),
            function: name,
            kind: string_field(&object, "type").unwrap_or_else(|| "function".into()),
            description: string_field(&object, "description").unwrap_or(goal),
            version: FIRST_VERSION.into(),
            params: BTreeMap::new(),
            extracted: Vec::new(),
            input_schema,
            output_schema,
            steps: Vec::new(),
            limits,
            // Written by the model alone: nothing independent vouches for it yet; the tests do.
            confidence: 0.5,
            alternatives: Vec::new(),
            examples,
            capabilities,
            dependencies,
        },
    )))
}

/// The shape of the test writer's answer.
pub fn tests_schema() -> Value {
    json!({
        "type": "object",
        "required": ["tests"],
        "additionalProperties": false,
        "properties": {
            "tests": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "input"],
                    "properties": {
                        "name": { "type": "string" },
                        "input": {},
                        "output": {},
                        "error": { "type": "string" }
                    }
                }
            }
        }
    })
}

/// The system prompt of the test writer.
pub fn tests_prompt() -> String {
    format!(
        "You write acceptance tests for a serverless function from its requirement alone; its \
         code does not exist yet. Answer with only a JSON object {{\"tests\": [{{\"name\", \
         \"input\", \"output\"}} or {{\"name\", \"input\", \"error\": \"text the error message \
         contains\"}}]}}: {} to {} tests that differ from the requirement's examples, covering \
         normal inputs, boundaries and invalid inputs. An output is exactly what a correct \
         function returns and must satisfy the output schema.",
        WRITTEN_TESTS.start(),
        WRITTEN_TESTS.end()
    )
}

/// The requirement as the test writer and (without expected outputs) the code generator see it.
fn requirement_summary(requirement: &TechnicalRequirement, with_expectations: bool) -> Value {
    let examples: Vec<Value> = requirement
        .examples
        .iter()
        .map(|e| {
            if with_expectations {
                json!({"name": e.name, "input": e.input, "output": e.output, "error": e.error})
            } else {
                json!({"name": e.name, "input": e.input})
            }
        })
        .collect();
    json!({
        "name": requirement.function,
        "type": requirement.kind,
        "goal": requirement.goal,
        "description": requirement.description,
        "input_schema": requirement.input_schema,
        "output_schema": requirement.output_schema,
        "examples": examples,
        "capabilities": requirement.capabilities,
        "dependencies": requirement.dependencies,
        "limits": requirement.limits,
    })
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// The user message of the test writer: the whole requirement.
pub fn tests_message(requirement: &TechnicalRequirement) -> String {
    format!(
        "The requirement:\n{}",
        pretty(&requirement_summary(requirement, true))
    )
}

/// Checks the test writer's answer into acceptance tests (origin `written`).
pub fn check_tests(
    text: &str,
    requirement: &TechnicalRequirement,
) -> Result<Vec<TestCase>, String> {
    let object = parse_object(text, &tests_schema())?;
    let cases = object
        .get("tests")
        .and_then(Value::as_array)
        .ok_or("tests is missing")?;
    if !WRITTEN_TESTS.contains(&cases.len()) {
        return Err(format!(
            "write {} to {} tests, not {}",
            WRITTEN_TESTS.start(),
            WRITTEN_TESTS.end(),
            cases.len()
        ));
    }
    let mut names: BTreeSet<String> = requirement
        .examples
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let mut tests = Vec::new();
    for case in cases {
        let case = checked_case(
            case,
            "test",
            &requirement.input_schema,
            &requirement.output_schema,
        )?;
        if !names.insert(case.name.clone()) {
            return Err(format!(
                "the test name {:?} is taken (by an example or another test); give each a new name",
                case.name
            ));
        }
        tests.push(TestCase {
            name: format!("written: {}", case.name),
            origin: "written".into(),
            input: case.input,
            expect: case.output,
            error: case.error,
            output_schema: None,
        });
    }
    Ok(tests)
}

/// The requirement's own examples as acceptance tests (origin `example`).
pub fn example_tests(requirement: &TechnicalRequirement) -> Vec<TestCase> {
    requirement
        .examples
        .iter()
        .map(|e| TestCase {
            name: format!("example: {}", e.name),
            origin: "example".into(),
            input: e.input.clone(),
            expect: e.output.clone(),
            error: e.error.clone(),
            output_schema: None,
        })
        .collect()
}

/// The shape of the code generator's answer.
pub fn code_schema() -> Value {
    json!({
        "type": "object",
        "required": ["klf.toml", "main.js"],
        "additionalProperties": false,
        "properties": {
            "klf.toml": { "type": "string", "minLength": 1 },
            "main.js": { "type": "string", "minLength": 1 }
        }
    })
}

/// The package contract, the `klf:base` reference and example packages: the code generator's
/// system prompt.
pub fn code_prompt(library: &Library) -> String {
    let mut prompt = String::from(
        "You write a function package for the KLF mesh: klf.toml and main.js. Answer with only a \
         JSON object {\"klf.toml\": \"...\", \"main.js\": \"...\"}.\n\n\
         main.js is an ES module whose default export is a class extending BaseFunction (or one \
         of the Base* classes below) from \"klf:base\":\n\
         ```js\n\
         import { BaseFunction, KlfInputError } from \"klf:base\";\n\
         export default class Name extends BaseFunction {\n\
         \x20 async execute(input) {\n\
         \x20   if (typeof input?.x !== \"number\") throw new KlfInputError(\"input.x must be a number\");\n\
         \x20   return { y: input.x * 2 };\n\
         \x20 }\n\
         }\n\
         ```\n\
         - execute(input) gets the JSON input and returns the JSON output; a thrown error's \
         message is what the caller sees. Check inputs and throw KlfInputError with a clear message.\n\
         - Only \"klf:base\" may be imported. No eval, Function, dynamic import, require, timers, \
         globalThis, window or process: there is no ambient I/O.\n\
         - this.config holds klf.toml's [config]; a Base* class reads its options from \
         this.settings (defaults overridden by [config]).\n\
         - Host capabilities are on this.ctx, only those listed in klf.toml's capabilities: \
         ctx.call(name, input) (a declared dependency, returns a promise), ctx.kv.get/put/delete/\
         list, ctx.log.info/warn/error, ctx.secret(name), ctx.model({messages}), \
         ctx.schedule.after/every/cancel, ctx.now().\n\n\
         klf.toml:\n\
         ```toml\n\
         name = \"the-name\"\nversion = \"1.0.0\"\ntype = \"data-processor\"\n\
         description = \"one line\"\nentry = \"main.js\"\nidempotent = true\n\
         capabilities = []\n\n[dependencies]\n# \"other-function\" = \"^1\"\n\n\
         [limits]\nmemory_mb = 32\ntimeout_ms = 1000\n\n[config]\n# values the code reads as this.config\n\
         ```\n\nThe klf:base reference (generated from the library):\n",
    );
    prompt.push_str(klf_functions::sandbox::BASE_REFERENCE);
    prompt.push_str("\n\nExample packages:\n");
    for recipe in EXAMPLE_RECIPES {
        let Ok(rendered) = render::render(
            library,
            &RenderRequest {
                recipe: recipe.into(),
                name: None,
                set: BTreeMap::new(),
            },
        ) else {
            continue;
        };
        for file in ["klf.toml", "main.js"] {
            if let Some(content) = rendered.files.get(file) {
                let shown = if file == "main.js" {
                    super::model::elide(content).module
                } else {
                    content.clone()
                };
                let _ = writeln!(prompt, "\n{recipe}/{file}:\n```\n{}\n```", shown.trim_end());
            }
        }
    }
    prompt
}

/// The user message of the code generator: the requirement without expected outputs, and for a
/// repair the previous package and what failed.
pub fn code_message(requirement: &TechnicalRequirement, attempt: &Attempt) -> String {
    let mut message = format!(
        "Write the package for this requirement (the examples show inputs only):\n{}\n",
        pretty(&requirement_summary(requirement, false))
    );
    if let Some(previous) = &attempt.previous {
        message.push_str("\nYour previous package:\n");
        for file in ["klf.toml", "main.js"] {
            if let Some(content) = previous.files.get(file) {
                let _ = writeln!(message, "\n{file}:\n```\n{}\n```", content.trim_end());
            }
        }
    }
    if !attempt.feedback.is_empty() {
        message.push_str("\nWhat failed (fix it, and answer with the whole corrected package):\n");
        for line in &attempt.feedback {
            let _ = writeln!(message, "- {line}");
        }
    }
    message
}

/// Checks the code generator's answer into a package. klf sets what the requirement fixes: the
/// name, the version, the type and the entry file.
pub fn check_code(
    text: &str,
    requirement: &TechnicalRequirement,
    round: u32,
) -> Result<GeneratedCode, String> {
    let object = parse_object(text, &code_schema())?;
    let manifest_text = object
        .get("klf.toml")
        .and_then(Value::as_str)
        .ok_or("klf.toml is not a string")?;
    let source = object
        .get("main.js")
        .and_then(Value::as_str)
        .ok_or("main.js is not a string")?;
    let mut table: toml::Table = manifest_text
        .parse()
        .map_err(|e| format!("klf.toml is not TOML: {e}"))?;
    table.insert("name".into(), requirement.function.clone().into());
    table.insert("version".into(), requirement.version_or_first().into());
    table.insert("type".into(), requirement.kind.clone().into());
    table.insert("entry".into(), "main.js".into());
    if !table.contains_key("description") {
        table.insert("description".into(), requirement.goal.clone().into());
    }
    let manifest_text =
        toml::to_string(&table).map_err(|e| format!("klf.toml cannot be written back: {e}"))?;
    let manifest = Manifest::parse(&manifest_text, "klf.toml").map_err(|e| e.to_string())?;
    for dependency in manifest.dependencies.keys() {
        if !requirement.dependencies.contains_key(dependency) {
            return Err(format!(
                "klf.toml depends on {dependency:?}, which the requirement does not list; depend \
                 only on {}",
                if requirement.dependencies.is_empty() {
                    "nothing".to_string()
                } else {
                    requirement
                        .dependencies
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    let mut files = BTreeMap::from([
        ("klf.toml".to_string(), manifest_text),
        ("main.js".to_string(), source.to_string()),
        (
            "schema/input.json".to_string(),
            pretty(&requirement.input_schema),
        ),
        (
            "schema/output.json".to_string(),
            pretty(&requirement.output_schema),
        ),
    ]);
    // The sample inputs `klf fn test` and `klf fn info` show (inputs only, like any package).
    for (i, example) in requirement.examples.iter().enumerate() {
        files.insert(
            format!("examples/example-{}.json", i + 1),
            pretty(&example.input),
        );
    }
    Ok(GeneratedCode {
        function: requirement.function.clone(),
        version: requirement.version_or_first(),
        recipe: String::new(),
        files,
        round,
        fixtures: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed() -> Vec<Deployed> {
        vec![Deployed {
            name: "series-cleaner".into(),
            version: "1.0.0".into(),
            kind: "data-processor".into(),
            description: "drops values that are not numbers".into(),
        }]
    }

    fn answer() -> Value {
        json!({
            "name": "sum-numbers",
            "type": "data-processor",
            "goal": "Sum a list of numbers",
            "description": "Adds up the numbers of a list.",
            "input_schema": {"type": "object", "required": ["xs"], "properties": {"xs": {"type": "array", "items": {"type": "number"}}}},
            "output_schema": {"type": "object", "required": ["sum"], "properties": {"sum": {"type": "number"}}},
            "examples": [
                {"name": "three", "input": {"xs": [1, 2, 3]}, "output": {"sum": 6}},
                {"name": "empty", "input": {"xs": []}, "output": {"sum": 0}},
                {"name": "not a list", "input": {"xs": "1,2"}, "error": "xs"}
            ],
            "capabilities": [],
            "dependencies": {},
            "limits": {"memory_mb": 16, "timeout_ms": 500, "latency_budget_ms": 20}
        })
    }

    fn requirement() -> TechnicalRequirement {
        match check_requirement(&answer().to_string(), "sum numbers", &deployed()) {
            Ok(RequirementAnswer::Requirement(r)) => *r,
            other => panic!("{other:?}"),
        }
    }

    fn problem(mut edit: impl FnMut(&mut Value)) -> String {
        let mut value = answer();
        edit(&mut value);
        match check_requirement(&value.to_string(), "sum numbers", &deployed()) {
            Err(problem) => problem,
            Ok(accepted) => panic!("accepted: {accepted:?}"),
        }
    }

    #[test]
    fn a_good_requirement_is_checked_into_a_freeform_requirement() {
        let r = requirement();
        assert!(r.is_freeform());
        assert_eq!(r.function, "sum-numbers");
        assert_eq!(r.kind, "data-processor");
        assert_eq!(r.version, FIRST_VERSION);
        assert_eq!(r.examples.len(), 3);
        assert_eq!(r.limits.latency_budget_ms, Some(20));
        assert_eq!(example_tests(&r).len(), 3);
    }

    #[test]
    fn a_refusal_is_an_honest_no() {
        let answer = check_requirement(r#"{"refuse": "poems are not functions"}"#, "x", &[]);
        assert_eq!(
            answer,
            Ok(RequirementAnswer::Refused("poems are not functions".into()))
        );
    }

    #[test]
    fn bad_requirements_name_the_problem() {
        type Edit = Box<dyn FnMut(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["name"] = json!("Sum Numbers")),
                "is not valid",
            ),
            (
                Box::new(|v| v["input_schema"] = json!({"type": "object", "$ref": "#/x"})),
                "input_schema.$ref",
            ),
            (
                Box::new(|v| v["examples"] = json!([v["examples"][0].clone()])),
                "give 3 to 8 examples, not 1",
            ),
            (
                Box::new(|v| v["examples"][0]["output"] = json!({"sum": "six"})),
                "example \"three\": its output does not match the output schema",
            ),
            (
                Box::new(|v| v["examples"][1]["error"] = json!("boom")),
                "has both an output and an error",
            ),
            (
                Box::new(|v| v["examples"][1]["name"] = json!("three")),
                "two examples are named \"three\"",
            ),
            (
                Box::new(|v| v["capabilities"] = json!(["network"])),
                "capability \"network\" does not exist",
            ),
            (
                Box::new(|v| v["dependencies"] = json!({"stock-feed": "^1"})),
                "dependency \"stock-feed\" is not a deployed function; depend only on: series-cleaner",
            ),
            (
                Box::new(|v| v["dependencies"] = json!({"series-cleaner": "^1"})),
                "needs the \"call\" capability",
            ),
            (
                Box::new(|v| v["limits"]["memory_mb"] = json!(100000)),
                "limits.memory_mb must be an integer from 8 to 256",
            ),
            (
                Box::new(|v| v["extra"] = json!(1)),
                "does not have the shape",
            ),
        ];
        for (mut edit, expected) in cases {
            let problem = problem(&mut edit);
            assert!(problem.contains(expected), "{expected}: {problem}");
        }
    }

    #[test]
    fn written_tests_are_checked_and_may_not_reuse_names() {
        let r = requirement();
        let good = json!({"tests": [
            {"name": "negative", "input": {"xs": [-1, 1]}, "output": {"sum": 0}},
            {"name": "missing xs", "input": {}, "error": "xs"}
        ]});
        let tests = check_tests(&good.to_string(), &r).expect("tests");
        assert_eq!(tests.len(), 2);
        assert_eq!(tests[0].origin, "written");
        assert_eq!(tests[0].name, "written: negative");
        let taken =
            json!({"tests": [{"name": "three", "input": {"xs": [3]}, "output": {"sum": 3}}]});
        assert!(
            check_tests(&taken.to_string(), &r)
                .unwrap_err()
                .contains("is taken")
        );
        let wrong = json!({"tests": [{"name": "n", "input": {"xs": [1]}, "output": {"total": 1}}]});
        assert!(
            check_tests(&wrong.to_string(), &r)
                .unwrap_err()
                .contains("does not match the output schema")
        );
    }

    #[test]
    fn the_code_generator_never_sees_an_expected_output() {
        let r = requirement();
        let message = code_message(
            &r,
            &Attempt {
                round: 1,
                feedback: vec!["test \"three\" failed: the output differs".into()],
                previous: None,
            },
        );
        assert!(message.contains("\"xs\": ["), "{message}");
        assert!(!message.contains("\"sum\": 6"), "{message}");
        assert!(!message.contains("\"output\""), "{message}");
        assert!(message.contains("- test \"three\" failed"), "{message}");
        // The test writer does see them: it writes more of the same kind.
        assert!(tests_message(&r).contains("\"sum\": 6"));
    }

    #[test]
    fn code_is_checked_and_klf_fixes_name_version_type_and_entry() {
        let r = requirement();
        let answer = json!({
            "klf.toml": "name = \"whatever\"\nversion = \"9.9.9\"\nentry = \"x.js\"\n[limits]\nmemory_mb = 16\n",
            "main.js": "import { BaseFunction } from \"klf:base\";\nexport default class S extends BaseFunction { async execute(input) { return { sum: input.xs.reduce((a, b) => a + b, 0) }; } }\n"
        });
        let code = check_code(&answer.to_string(), &r, 0).expect("code");
        let manifest = Manifest::parse(&code.files["klf.toml"], "klf.toml").expect("manifest");
        assert_eq!(manifest.name, "sum-numbers");
        assert_eq!(manifest.version.to_string(), FIRST_VERSION);
        assert_eq!(manifest.kind, "data-processor");
        assert_eq!(manifest.entry, "main.js");
        assert!(code.files.contains_key("schema/input.json"));
        assert_eq!(
            code.files
                .keys()
                .filter(|f| f.starts_with("examples/"))
                .count(),
            3
        );
        let sneaky = json!({
            "klf.toml": "capabilities = [\"call\"]\n[dependencies]\n\"series-cleaner\" = \"^1\"\n",
            "main.js": "export default class {}"
        });
        assert!(
            check_code(&sneaky.to_string(), &r, 0)
                .unwrap_err()
                .contains("which the requirement does not list")
        );
        assert!(
            check_code(r#"{"klf.toml": "name = [", "main.js": "x"}"#, &r, 0)
                .unwrap_err()
                .contains("klf.toml is not TOML")
        );
    }

    #[test]
    fn the_code_prompt_carries_the_generated_reference_and_example_packages() {
        let prompt = code_prompt(&Library::shipped());
        assert!(prompt.contains("## class BaseDataStore extends BaseFunction"));
        assert!(prompt.contains("csv-to-json/main.js"), "no example package");
        assert!(
            prompt.contains("static tests = \"@kept\";"),
            "tests are elided"
        );
    }
}
