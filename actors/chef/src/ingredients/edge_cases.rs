//! Testing templates applied to a recipe: each generator derives inputs from a valid input (the
//! recipe's first example) and the input schema — empty input, a missing required field, a wrong
//! type, numbers at and beyond their bounds, arrays emptied or grown past `maxItems`, … — and each
//! case carries the outcome the function must produce.
//!
//! A generated input is kept only when the schema agrees with the declared outcome (a `rejected`
//! case must be invalid, an `accepted` one valid), so a generator never asserts something the
//! schema does not say.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::kinds::{EdgeCase, Generator, Outcome, TestingTemplate};
use super::schema::is_valid;

/// One generated test case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedCase {
    pub name: String,
    pub input: Value,
    pub outcome: Outcome,
    /// Text the error must contain (rejected cases).
    pub error: Option<String>,
}

/// Nesting depth down to which properties are mutated.
const MAX_DEPTH: usize = 3;

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A place in the input that a schema describes.
struct Slot<'s> {
    path: Vec<Seg>,
    schema: &'s Value,
}

fn display(path: &[Seg]) -> String {
    let mut out = String::from("input");
    for seg in path {
        match seg {
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn get_mut<'v>(value: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    let mut here = value;
    for seg in path {
        here = match (seg, here) {
            (Seg::Key(k), Value::Object(map)) => map.get_mut(k)?,
            (Seg::Index(i), Value::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(here)
}

fn get<'v>(value: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    let mut here = value;
    for seg in path {
        here = match (seg, here) {
            (Seg::Key(k), Value::Object(map)) => map.get(k)?,
            (Seg::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(here)
}

/// Every place of `base` its schema describes: properties of objects, and the first item of arrays.
fn slots<'s>(schema: &'s Value, base: &Value, path: Vec<Seg>, out: &mut Vec<Slot<'s>>) {
    if path.len() > MAX_DEPTH * 2 {
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let mut p = path.clone();
            p.push(Seg::Key(name.clone()));
            if let Some(value) = get(base, &p) {
                out.push(Slot {
                    path: p.clone(),
                    schema: sub,
                });
                if value.is_object() || value.is_array() {
                    slots(sub, base, p, out);
                }
            }
        }
    }
    if let Some(items) = schema.get("items")
        && get(base, &path)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        let mut p = path.clone();
        p.push(Seg::Index(0));
        if get(base, &p).is_some_and(|v| v.is_object() || v.is_array()) {
            slots(items, base, p, out);
        }
    }
}

/// The object schemas of `base` (the top level, and objects reached by [`slots`]) with their paths.
fn objects<'s>(schema: &'s Value, slots: &[Slot<'s>]) -> Vec<(Vec<Seg>, &'s Value)> {
    let mut out = vec![(Vec::new(), schema)];
    for slot in slots {
        if slot.schema.get("properties").is_some() {
            out.push((slot.path.clone(), slot.schema));
        }
        if let Some(items) = slot.schema.get("items")
            && items.get("properties").is_some()
        {
            let mut p = slot.path.clone();
            p.push(Seg::Index(0));
            out.push((p, items));
        }
    }
    out
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn replaced(base: &Value, path: &[Seg], value: Value) -> Option<Value> {
    let mut input = base.clone();
    *get_mut(&mut input, path)? = value;
    Some(input)
}

fn number(n: f64, integer: bool) -> Value {
    if integer && n.fract() == 0.0 && n.abs() < 9.0e15 {
        json!(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Candidate inputs of one generator, with the path they are about.
fn candidates(case: &EdgeCase, schema: &Value, base: &Value) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    slots(schema, base, Vec::new(), &mut all);
    let mut out = Vec::new();
    match case.generator {
        Generator::EmptyInput => out.push(("{}".to_string(), json!({}))),
        Generator::NullInput => out.push(("null".to_string(), Value::Null)),
        Generator::MissingRequired => {
            for (path, object) in objects(schema, &all) {
                for name in object
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let mut input = base.clone();
                    if let Some(Value::Object(map)) = get_mut(&mut input, &path)
                        && map.remove(name).is_some()
                    {
                        let mut p = path.clone();
                        p.push(Seg::Key(name.to_string()));
                        out.push((display(&p), input));
                    }
                }
            }
        }
        Generator::WrongType => {
            for slot in &all {
                let wrong = match types(slot.schema).first().copied() {
                    Some("string") => json!(12345),
                    Some("number" | "integer") => json!("not a number"),
                    Some("boolean") => json!("yes"),
                    Some("array") => json!("not an array"),
                    Some("object") => json!("not an object"),
                    _ => continue,
                };
                if let Some(input) = replaced(base, &slot.path, wrong) {
                    out.push((display(&slot.path), input));
                }
            }
        }
        Generator::BelowMinimum
        | Generator::AtMinimum
        | Generator::AboveMaximum
        | Generator::AtMaximum => {
            for slot in &all {
                let ts = types(slot.schema);
                if !ts.iter().any(|t| *t == "number" || *t == "integer") {
                    continue;
                }
                let integer = !ts.contains(&"number");
                let bound = |k: &str| slot.schema.get(k).and_then(Value::as_f64);
                let value = match case.generator {
                    Generator::BelowMinimum => bound("minimum")
                        .map(|m| m - 1.0)
                        .or_else(|| bound("exclusiveMinimum")),
                    Generator::AtMinimum => bound("minimum"),
                    Generator::AboveMaximum => bound("maximum")
                        .map(|m| m + 1.0)
                        .or_else(|| bound("exclusiveMaximum")),
                    _ => bound("maximum"),
                };
                if let Some(v) = value
                    && let Some(input) = replaced(base, &slot.path, number(v, integer))
                {
                    out.push((display(&slot.path), input));
                }
            }
        }
        Generator::OversizedArray | Generator::MaxSizeArray | Generator::EmptyArray => {
            for slot in &all {
                if !types(slot.schema).contains(&"array") {
                    continue;
                }
                let Some(items) = get(base, &slot.path).and_then(Value::as_array) else {
                    continue;
                };
                let length = match case.generator {
                    Generator::EmptyArray => Some(0),
                    Generator::OversizedArray => slot
                        .schema
                        .get("maxItems")
                        .and_then(Value::as_u64)
                        .map(|n| n + 1),
                    _ => slot.schema.get("maxItems").and_then(Value::as_u64),
                };
                let Some(length) = length else { continue };
                if length > case.max_items || (length > 0 && items.is_empty()) {
                    continue;
                }
                let grown: Vec<Value> = items
                    .iter()
                    .cycle()
                    .take(length as usize)
                    .cloned()
                    .collect();
                if let Some(input) = replaced(base, &slot.path, Value::Array(grown)) {
                    out.push((format!("{} ({length} items)", display(&slot.path)), input));
                }
            }
        }
        Generator::TooLongString | Generator::EmptyString => {
            for slot in &all {
                if !types(slot.schema).contains(&"string") {
                    continue;
                }
                let text = if case.generator == Generator::EmptyString {
                    String::new()
                } else {
                    match slot.schema.get("maxLength").and_then(Value::as_u64) {
                        Some(n) if n < case.max_items.max(10_000) => "x".repeat(n as usize + 1),
                        _ => continue,
                    }
                };
                if let Some(input) = replaced(base, &slot.path, Value::String(text)) {
                    out.push((display(&slot.path), input));
                }
            }
        }
        Generator::InvalidEnum => {
            for slot in &all {
                if slot.schema.get("enum").is_none() {
                    continue;
                }
                if let Some(input) = replaced(base, &slot.path, json!("not-one-of-the-choices")) {
                    out.push((display(&slot.path), input));
                }
            }
        }
        Generator::ExtraField => {
            for (path, _) in objects(schema, &all) {
                let mut input = base.clone();
                if let Some(Value::Object(map)) = get_mut(&mut input, &path) {
                    map.insert("unexpected_field".into(), json!(1));
                    out.push((display(&path), input));
                }
            }
        }
    }
    out
}

fn generator_name(generator: Generator) -> String {
    serde_json::to_value(generator)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The cases a testing template generates for `schema`, starting from the valid input `base`.
pub fn generate(template: &TestingTemplate, schema: &Value, base: &Value) -> Vec<GeneratedCase> {
    let mut out: Vec<GeneratedCase> = Vec::new();
    for case in &template.cases {
        let mut kept = 0;
        for (about, input) in candidates(case, schema, base) {
            if kept >= case.max_cases {
                break;
            }
            let valid = is_valid(schema, &input);
            if valid != (case.outcome == Outcome::Accepted) {
                continue;
            }
            if out.iter().any(|c| c.input == input) {
                continue;
            }
            kept += 1;
            out.push(GeneratedCase {
                name: format!("{}: {about}", generator_name(case.generator)),
                input,
                outcome: case.outcome,
                error: match case.outcome {
                    Outcome::Rejected => {
                        Some(case.error.clone().unwrap_or_else(|| "InputError".into()))
                    }
                    Outcome::Accepted => None,
                },
            });
        }
    }
    out
}

/// An empty JSON object, for callers that need a base input when a recipe has none.
pub fn empty_object() -> Value {
    Value::Object(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(cases: &[(Generator, Outcome)]) -> TestingTemplate {
        TestingTemplate {
            name: "t".into(),
            description: String::new(),
            cases: cases
                .iter()
                .map(|(generator, outcome)| EdgeCase {
                    generator: *generator,
                    outcome: *outcome,
                    error: None,
                    max_cases: 8,
                    max_items: 50,
                })
                .collect(),
        }
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["series"],
            "additionalProperties": false,
            "properties": {
                "series": {
                    "type": "array", "minItems": 1, "maxItems": 4,
                    "items": {
                        "type": "object",
                        "required": ["v"],
                        "properties": {"v": {"type": "number", "minimum": 0, "maximum": 10}}
                    }
                },
                "mode": {"type": "string", "enum": ["a", "b"]}
            }
        })
    }

    #[test]
    fn generators_follow_the_schema_and_the_declared_outcome() {
        let base = json!({"series": [{"v": 1}, {"v": 2}], "mode": "a"});
        let t = template(&[
            (Generator::EmptyInput, Outcome::Rejected),
            (Generator::MissingRequired, Outcome::Rejected),
            (Generator::WrongType, Outcome::Rejected),
            (Generator::BelowMinimum, Outcome::Rejected),
            (Generator::AtMaximum, Outcome::Accepted),
            (Generator::OversizedArray, Outcome::Rejected),
            (Generator::MaxSizeArray, Outcome::Accepted),
            (Generator::EmptyArray, Outcome::Rejected),
            (Generator::InvalidEnum, Outcome::Rejected),
            (Generator::ExtraField, Outcome::Rejected),
            // The schema allows extra fields inside items: an accepted case there.
            (Generator::ExtraField, Outcome::Accepted),
        ]);
        let cases = generate(&t, &schema(), &base);
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        for expected in [
            "empty-input: {}",
            "missing-required: input.series",
            "missing-required: input.series[0].v",
            "wrong-type: input.series",
            "wrong-type: input.series[0].v",
            "wrong-type: input.mode",
            "below-minimum: input.series[0].v",
            "at-maximum: input.series[0].v",
            "oversized-array: input.series (5 items)",
            "max-size-array: input.series (4 items)",
            "empty-array: input.series (0 items)",
            "invalid-enum: input.mode",
            "extra-field: input",
            "extra-field: input.series[0]",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:#?}"
            );
        }
        for case in &cases {
            assert_eq!(
                is_valid(&schema(), &case.input),
                case.outcome == Outcome::Accepted,
                "{}",
                case.name
            );
            assert_eq!(case.error.is_some(), case.outcome == Outcome::Rejected);
        }
    }
}
