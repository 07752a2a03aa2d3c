//! The JSON Schemas of recipes: restricted to the subset `validateSchema` of `klf:base` implements
//! (so a function checks its input exactly as the loader checks the recipe's examples), and
//! validated with the `jsonschema` crate.

use serde_json::Value;

/// Keywords `validateSchema` of `klf:base` understands, plus annotations.
pub const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "format",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    // annotations
    "default",
    "title",
    "description",
    "examples",
    "$comment",
];

const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];
const FORMATS: &[&str] = &["date-time", "date", "email", "uri", "uuid"];

/// Checks that `schema` is a valid JSON Schema using only the supported keywords. On failure returns
/// the path inside the schema (`.properties.series.items.type`) and a message.
pub fn check_schema(schema: &Value) -> Result<(), (String, String)> {
    walk(schema, "")?;
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| (String::new(), format!("not a valid JSON Schema: {e}")))
}

fn walk(schema: &Value, at: &str) -> Result<(), (String, String)> {
    let map = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(map) => map,
        other => {
            return Err((
                at.to_string(),
                format!(
                    "a schema is a table (or true/false), found {}",
                    super::kinds::json_type(other)
                ),
            ));
        }
    };
    for (key, value) in map {
        let here = format!("{at}.{key}");
        match key.as_str() {
            "properties" => {
                let Value::Object(props) = value else {
                    return Err((here, "expected a table of property schemas".into()));
                };
                for (name, sub) in props {
                    walk(sub, &format!("{here}.{name}"))?;
                }
            }
            "items" | "additionalProperties" | "not" => walk(value, &here)?,
            "anyOf" | "oneOf" | "allOf" => {
                let Value::Array(items) = value else {
                    return Err((here, "expected an array of schemas".into()));
                };
                for (i, sub) in items.iter().enumerate() {
                    walk(sub, &format!("{here}[{i}]"))?;
                }
            }
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(items) => items.iter().collect(),
                    one => vec![one],
                };
                for name in names {
                    if !name.as_str().is_some_and(|n| TYPES.contains(&n)) {
                        return Err((
                            here,
                            format!("{name} is not a type (known: {})", TYPES.join(", ")),
                        ));
                    }
                }
            }
            "format" => {
                if !value.as_str().is_some_and(|f| FORMATS.contains(&f)) {
                    return Err((
                        here,
                        format!(
                            "{value} is not a supported format (known: {})",
                            FORMATS.join(", ")
                        ),
                    ));
                }
            }
            k if KEYWORDS.contains(&k) => {}
            other => {
                return Err((
                    here,
                    format!(
                        "{other:?} is not a keyword klf:base's validateSchema supports (known: {})",
                        KEYWORDS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Validates `value` against `schema`; on failure, the first error with its path.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    let validator =
        jsonschema::validator_for(schema).map_err(|e| format!("the schema is invalid: {e}"))?;
    match validator.iter_errors(value).next() {
        None => Ok(()),
        Some(error) => {
            let path = error.instance_path().to_string();
            let path = if path.is_empty() { "/".into() } else { path };
            Err(format!("at {path}: {error}"))
        }
    }
}

/// Where `value` first breaks `schema` (`/flags/0`, `/` for the root) and which keyword it
/// breaks, without the schema's own values: what the code generator may be told of a failed check
/// whose schema holds expected outputs. `None` when it is valid.
pub fn violation(schema: &Value, value: &Value) -> Option<String> {
    let validator = jsonschema::validator_for(schema).ok()?;
    let error = validator.iter_errors(value).next()?;
    let path = error.instance_path().to_string();
    let path = if path.is_empty() { "/".into() } else { path };
    let keyword = error
        .schema_path()
        .to_string()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    Some(format!("at {path} (the `{keyword}` check)"))
}

/// Whether `value` is valid against `schema` (false when the schema itself is invalid).
pub fn is_valid(schema: &Value, value: &Value) -> bool {
    jsonschema::validator_for(schema).is_ok_and(|v| v.is_valid(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unsupported_keywords_are_named_with_their_path() {
        let schema =
            json!({"type": "object", "properties": {"a": {"type": "string", "$ref": "#/x"}}});
        let (path, message) = check_schema(&schema).unwrap_err();
        assert_eq!(path, ".properties.a.$ref");
        assert!(message.contains("not a keyword"), "{message}");
        let schema = json!({"type": "obj"});
        assert_eq!(check_schema(&schema).unwrap_err().0, ".type");
        assert!(check_schema(&json!({"type": ["number", "null"], "minimum": 0})).is_ok());
    }

    #[test]
    fn a_violation_names_the_place_and_the_check_but_not_the_expected_value() {
        let schema = json!({"type": "object", "properties": {"total": {"const": 115}}});
        let told = violation(&schema, &json!({"total": 114})).unwrap_or_default();
        assert_eq!(told, "at /total (the `const` check)");
        assert!(!told.contains("115"));
        assert_eq!(violation(&schema, &json!({"total": 115})), None);
    }

    #[test]
    fn validation_names_the_failing_value() {
        let schema = json!({"type": "object", "required": ["xs"], "properties": {"xs": {"type": "array", "items": {"type": "number"}}}});
        assert!(validate(&schema, &json!({"xs": [1, 2]})).is_ok());
        let error = validate(&schema, &json!({"xs": [1, "a"]})).unwrap_err();
        assert!(error.contains("/xs/1"), "{error}");
    }
}
