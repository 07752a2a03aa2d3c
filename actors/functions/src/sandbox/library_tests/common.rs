//! `BaseFunction`'s settings and the helpers of `library/common.js` every part uses: paths,
//! schema checks, conditions.

use super::*;

#[tokio::test]
async fn settings_merge_class_defaults_and_config_deeply() {
    let source = "import { BaseDataProcessor } from \"klf:base\";
        class Middle extends BaseDataProcessor {
          static defaults = { limits: { low: 1, high: 9 }, tags: ['a', 'b'], name: 'middle' };
        }
        export default class Leaf extends Middle {
          static defaults = { limits: { high: 5 }, extra: true };
          async execute(input) {
            const before = JSON.stringify(this.settings);
            this.settings.limits.low = 100;
            return { settings: JSON.parse(before), middle: Middle.defaults };
          }
        }";
    let instance = start_code(
        code(
            source.to_string(),
            json!({ "limits": { "low": 2 }, "tags": ["z"], "steps": [{ "limit": 1 }] }),
        ),
        FakeHost::echo(),
    )
    .await;
    let output = ok(&instance, json!(null)).await;
    assert_eq!(
        output["settings"],
        json!({ "steps": [{ "limit": 1 }], "limits": { "low": 2, "high": 5 },
                "tags": ["z"], "name": "middle", "extra": true })
    );
    // Changing this.settings changed no class's defaults.
    assert_eq!(
        output["middle"],
        json!({ "limits": { "low": 1, "high": 9 }, "tags": ["a", "b"], "name": "middle" })
    );
}

const HELPERS: &str = "
  get(obj, path) { return klf.getPath(obj, path) ?? null; }
  set(obj, path, value) { return klf.setPath(obj, path, value); }
  schema(value, schema) { return klf.validateSchema(value, schema); }
  cond(condition, facts) { return klf.evaluateCondition(condition, facts); }
";

#[tokio::test]
async fn paths_read_and_write_nested_values() {
    let i = Subject::of("BaseValidator")
        .body(HELPERS)
        .start(json!({}))
        .await;
    let doc = json!({ "a": { "b": [1, { "c": 5 }], "x y": 2 } });
    assert_eq!(call(&i, "get", json!([doc, "a.b[1].c"])).await, json!(5));
    assert_eq!(call(&i, "get", json!([doc, "a[\"x y\"]"])).await, json!(2));
    assert_eq!(call(&i, "get", json!([doc, "a.b.1.c"])).await, json!(5));
    assert_eq!(call(&i, "get", json!([doc, "a.zz.c"])).await, json!(null));
    assert_eq!(
        call(&i, "set", json!([{ "k": 1 }, "a.list[1].v", 7])).await,
        json!({ "k": 1, "a": { "list": [null, { "v": 7 }] } })
    );
    call_fails_with(
        &i,
        "get",
        json!([doc, "a[b"]),
        &["InputError", "\"a[b\" is not a valid path"],
    )
    .await;
    call_fails_with(
        &i,
        "set",
        json!([{}, "__proto__.polluted", 1]),
        &["\"__proto__\" is not allowed"],
    )
    .await;
    call_fails_with(
        &i,
        "set",
        json!([{ "a": 3 }, "a.b", 1]),
        &["a: is 3, cannot set \"b\" inside it"],
    )
    .await;
    assert_eq!(call(&i, "get", json!([doc, "a.b[0]"])).await, json!(1));
}

#[tokio::test]
async fn validate_schema_covers_the_subset() {
    let i = Subject::of("BaseValidator")
        .body(HELPERS)
        .start(json!({}))
        .await;
    let schema = json!({
        "type": "object",
        "required": ["id", "email", "when"],
        "additionalProperties": false,
        "properties": {
            "id": { "type": "string", "format": "uuid" },
            "email": { "type": "string", "format": "email" },
            "when": { "type": "string", "format": "date-time" },
            "day": { "type": "string", "format": "date" },
            "site": { "type": "string", "format": "uri" },
            "name": { "type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z😀]+$" },
            "qty": { "type": "integer", "minimum": 1, "exclusiveMaximum": 10 },
            "price": { "type": ["number", "null"], "exclusiveMinimum": 0 },
            "kind": { "enum": ["a", "b"] },
            "v": { "const": 2 },
            "tags": { "type": "array", "items": { "type": "string" }, "minItems": 1,
                      "maxItems": 2, "uniqueItems": true },
            "pair": { "type": "array", "items": [{ "type": "number" }, { "type": "string" }] },
            "alt": { "anyOf": [{ "type": "number" }, { "type": "string", "minLength": 3 }] },
            "one": { "oneOf": [{ "minimum": 0 }, { "maximum": 10 }] },
            "no": { "not": { "type": "null" } },
            "both": { "allOf": [{ "minimum": 1 }, { "maximum": 2 }] }
        }
    });
    let good = json!({
        "id": "123e4567-e89b-12d3-a456-426614174000", "email": "ann@example.org",
        "when": "2024-02-29T12:30:00.5+01:00", "day": "2024-02-29", "site": "https://x.org/a?b",
        "name": "a😀c", "qty": 9, "price": null, "kind": "b", "v": 2, "tags": ["x", "y"],
        "pair": [1, "one"], "alt": "abc", "one": 20, "no": 0, "both": 2
    });
    assert_eq!(
        call(&i, "schema", json!([good, schema])).await,
        json!({ "valid": true, "errors": [] })
    );
    let bad = json!({
        "id": "nope", "email": "ann@", "when": "2023-02-29T12:30:00Z", "day": "2024-13-01",
        "site": "not a uri", "name": "abcd", "qty": 10, "price": 0, "kind": "c", "v": 3,
        "tags": ["x", "x", 3], "pair": ["1"], "alt": "ab", "one": 5, "no": null, "both": 3,
        "stray": true
    });
    let result = call(&i, "schema", json!([bad, schema])).await;
    assert_eq!(result["valid"], json!(false));
    let errors: Vec<String> = result["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["path"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let expected = [
        "input.id expected a UUID, got \"nope\"",
        "input.email expected an email address",
        "input.when expected a date-time",
        "input.day expected a date (YYYY-MM-DD)",
        "input.site expected a URI",
        "input.name expected at most 3 characters, got 4",
        "input.qty expected a number < 10, got 10",
        "input.price expected a number > 0, got 0",
        "input.kind expected one of \"a\", \"b\", got \"c\"",
        "input.v expected 2, got 3",
        "input.tags expected at most 2 items, got 3",
        "input.tags expected unique items, but items 0 and 1 are equal",
        "input.tags[2] expected string, got 3",
        "input.pair[0] expected number, got \"1\"",
        "input.alt does not match any of the 2 schemas in anyOf",
        "input.one matches 2 of the schemas in oneOf, expected exactly one",
        "input.no must not match the schema in not",
        "input.both expected a number ≤ 2, got 3",
        "input.stray is not allowed",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    // A malformed schema is a ConfigError naming the schema path.
    call_fails_with(
        &i,
        "schema",
        json!([1, { "properties": { "a": { "type": "strnig" } }, "type": "object" }]),
        &[
            "ConfigError",
            "schema.properties.a.type: expected one of",
            "got \"strnig\"",
        ],
    )
    .await;
    call_fails_with(
        &i,
        "schema",
        json!([{ "a": "x" }, { "properties": { "a": { "pattern": "(" } } }]),
        &[
            "schema.properties.a.pattern",
            "not a valid regular expression",
        ],
    )
    .await;
    assert_eq!(
        call(&i, "schema", json!([3, { "type": "integer" }])).await["valid"],
        json!(true)
    );
}

#[tokio::test]
async fn conditions_support_every_operator() {
    let i = Subject::of("BaseValidator")
        .body(HELPERS)
        .start(json!({}))
        .await;
    let facts = json!({ "n": 5, "s": "hello", "tags": ["a", "b"], "obj": { "k": [1] },
                        "limit": 4, "nothing": null });
    let cases = [
        (json!({ "field": "n", "op": "eq", "value": 5 }), true),
        (
            json!({ "field": "obj", "op": "eq", "value": { "k": [1] } }),
            true,
        ),
        (json!({ "field": "n", "op": "ne", "value": 5 }), false),
        (json!({ "field": "n", "op": "gt", "value": 4 }), true),
        (json!({ "field": "n", "op": "gte", "value": 5 }), true),
        (json!({ "field": "n", "op": "lt", "value": 5 }), false),
        (json!({ "field": "n", "op": "lte", "value": 5 }), true),
        (json!({ "field": "s", "op": "gt", "value": 3 }), false),
        (json!({ "field": "s", "op": "lt", "value": "world" }), true),
        (json!({ "field": "n", "op": "in", "value": [1, 5] }), true),
        (json!({ "field": "n", "op": "nin", "value": [1, 5] }), false),
        (
            json!({ "field": "s", "op": "contains", "value": "ell" }),
            true,
        ),
        (
            json!({ "field": "tags", "op": "contains", "value": "b" }),
            true,
        ),
        (
            json!({ "field": "s", "op": "matches", "value": "^HEL", "flags": "i" }),
            true,
        ),
        (json!({ "field": "nothing", "op": "exists" }), false),
        (
            json!({ "field": "missing", "op": "exists", "value": false }),
            true,
        ),
        (
            json!({ "field": "n", "op": "gt", "valueFrom": "limit" }),
            true,
        ),
        (
            json!({ "all": [{ "field": "n", "value": 5 }, { "not": { "field": "s", "value": "x" } }] }),
            true,
        ),
        (
            json!({ "any": [{ "field": "n", "value": 1 }, { "field": "n", "value": 2 }] }),
            false,
        ),
        (json!({ "all": [] }), true),
        (json!(true), true),
    ];
    for (condition, expected) in cases {
        assert_eq!(
            call(&i, "cond", json!([condition, facts])).await,
            json!(expected),
            "{condition}"
        );
    }
    // Mistakes are found even in branches these facts never reach.
    call_fails_with(
        &i,
        "cond",
        json!([{ "any": [{ "field": "n", "value": 5 }, { "field": "n", "op": "between", "value": 1 }] }, facts]),
        &["condition.any[1].op: unknown operator \"between\"", "expected one of eq, ne"],
    )
    .await;
    call_fails_with(
        &i,
        "cond",
        json!([{ "field": "n", "op": "in", "value": 3 }, facts]),
        &["condition.value: expected an array for \"in\""],
    )
    .await;
    call_fails_with(
        &i,
        "cond",
        json!([{ "all": [], "any": [] }, facts]),
        &["exactly one of"],
    )
    .await;
    call_fails_with(
        &i,
        "cond",
        json!([{ "field": "s", "op": "matches", "value": "(" }, facts]),
        &["not a valid regular expression"],
    )
    .await;
    assert_eq!(
        call(&i, "cond", json!([{ "field": "n", "value": 5 }, facts])).await,
        json!(true)
    );
}
