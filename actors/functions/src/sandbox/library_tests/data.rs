//! `library/data.js`: `BaseDataStore`, `BaseDataProcessor`, `BaseDataValidator`,
//! `BaseDataTransformer`.

use super::*;

#[tokio::test]
async fn data_store_versions_records_and_detects_conflicts() {
    let host = FakeHost::echo();
    let config = json!({ "collection": "orders", "schema": {
        "type": "object", "required": ["id", "total"],
        "properties": { "id": { "type": "string" }, "total": { "type": "number", "minimum": 0 } },
        "additionalProperties": false
    }});
    let i = Subject::of("BaseDataStore").on(&host).start(config).await;
    let first = ok(
        &i,
        json!({ "op": "put", "record": { "id": "o1", "total": 5 } }),
    )
    .await["record"]
        .clone();
    assert_eq!(first["_version"], json!(1));
    assert_eq!(first["_createdAt"], first["_updatedAt"]);
    assert!(
        first["_updatedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{first}"
    );
    assert_eq!(host.kv().get("orders/o1"), Some(first.clone()));
    // A read-modify-write carries the version it read.
    let mut changed = first.clone();
    changed["total"] = json!(6);
    assert_eq!(
        ok(&i, json!({ "op": "put", "record": changed })).await["record"]["_version"],
        json!(2)
    );
    fails_with(
        &i,
        json!({ "op": "put", "record": changed }),
        &["ConflictError: orders/o1: expected version 1, but the stored version is 2"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "put", "record": { "id": "o1", "total": 1 }, "expectedVersion": 0 }),
        &["expected version 0, but the stored version is 2"],
    )
    .await;
    assert_eq!(
        ok(
            &i,
            json!({ "op": "put", "record": { "id": "o2", "total": 50 }, "expectedVersion": 0 })
        )
        .await["record"]["_version"],
        json!(1)
    );
    ok(
        &i,
        json!({ "op": "put", "record": { "id": "p3", "total": 500 } }),
    )
    .await;
    fails_with(&i, json!({ "op": "put", "record": { "id": "o4", "total": -1, "note": "x" } }), &["InputError: invalid record: record.total: expected a number ≥ 0, got -1; record.note: is not allowed"]).await;
    fails_with(
        &i,
        json!({ "op": "put", "record": { "total": 1 } }),
        &["record.id: expected a record id"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "upsert" }),
        &["input.op: expected one of \"put\", \"get\", \"delete\", \"list\", \"query\""],
    )
    .await;

    assert_eq!(
        ok(&i, json!({ "op": "get", "id": "o1" })).await["record"]["total"],
        json!(6)
    );
    assert_eq!(
        ok(&i, json!({ "op": "get", "id": "nope" })).await,
        json!({ "record": null })
    );
    let ids = |records: &Value| -> Vec<Value> {
        records["records"]
            .as_array()
            .map(|r| r.iter().map(|r| r["id"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&ok(&i, json!({ "op": "list", "prefix": "o" })).await),
        [json!("o1"), json!("o2")]
    );
    assert_eq!(
        ids(&ok(&i, json!({ "op": "list", "limit": 2 })).await),
        [json!("o1"), json!("o2")]
    );
    assert_eq!(
        ids(&ok(
            &i,
            json!({ "op": "query", "filter": { "field": "total", "op": "gte", "value": 6 } })
        )
        .await),
        [json!("o1"), json!("o2"), json!("p3")]
    );
    assert_eq!(ids(&ok(&i, json!({ "op": "query", "filter": { "field": "total", "op": "gt", "value": 6 }, "limit": 1 })).await), [json!("o2")]);
    fails_with(
        &i,
        json!({ "op": "query", "filter": { "field": "total", "op": "over" } }),
        &["filter.op: unknown operator \"over\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "delete", "id": "o2", "expectedVersion": 5 }),
        &["ConflictError"],
    )
    .await;
    assert_eq!(
        ok(&i, json!({ "op": "delete", "id": "o2" })).await,
        json!({ "deleted": true })
    );
    assert_eq!(
        ok(&i, json!({ "op": "delete", "id": "o2" })).await,
        json!({ "deleted": false })
    );
    assert_eq!(host.kv().get("orders/o2"), None);
}

#[tokio::test]
async fn data_processor_runs_pipelines_with_exact_numbers() {
    let i = Subject::of("BaseDataProcessor").start(json!({})).await;
    let records = json!([
        { "t": 1, "sym": "A", "price": 10, "qty": 1 },
        { "t": 2, "sym": "B", "price": 20, "qty": 2 },
        { "t": 3, "sym": "A", "price": 11, "qty": 3 },
        { "t": 4, "sym": "B", "price": 22, "qty": 1 },
        { "t": 5, "sym": "A", "price": 12.1, "qty": 2 }
    ]);
    let steps = json!([
        { "compute": {
            "value": { "op": "mul", "args": ["price", "qty"] },
            "chg": { "op": "pct_change", "args": ["price"] }
        }},
        // A computed field is there for the next step.
        { "compute": {
            "net": { "op": "round", "args": [{ "op": "sub", "args": ["value", { "op": "mul", "args": ["value", 0.1] }] }, 2] }
        }},
        { "window": { "field": "price", "size": 2, "op": "avg", "as": "ma2", "by": "sym" } },
        { "filter": { "field": "sym", "op": "eq", "value": "A" } },
        { "sort": { "by": "price", "order": "desc" } },
        { "select": ["t", "value", "net", "ma2", "chg"] }
    ]);
    let out = ok(&i, json!({ "records": records, "steps": steps })).await["records"].clone();
    assert_eq!(out.as_array().map(Vec::len), Some(3));
    assert_eq!(out[0]["t"], json!(5));
    close(&out[0]["value"], 24.2);
    close(&out[0]["net"], 21.78);
    close(&out[0]["ma2"], 11.55);
    close(&out[0]["chg"], (12.1 - 22.0) / 22.0);
    assert_eq!(out[1]["t"], json!(3));
    close(&out[1]["ma2"], 10.5);
    close(&out[1]["chg"], (11.0 - 20.0) / 20.0);
    assert_eq!(
        out[2],
        json!({ "t": 1, "value": 10, "net": 9, "ma2": null, "chg": null })
    );

    let groups = ok(&i, json!({ "records": records, "steps": [
        { "groupBy": { "by": ["sym"], "aggregates": {
            "n": { "op": "count" }, "avg": { "op": "avg", "field": "price" },
            "sum": { "op": "sum", "field": "qty" }, "sd": { "op": "stddev", "field": "price" },
            "lo": { "op": "min", "field": "price" }, "hi": { "op": "max", "field": "price" },
            "first": { "op": "first", "field": "t" }, "last": { "op": "last", "field": "t" } } } },
        { "sort": { "by": "sym" } }
    ]})).await["records"].clone();
    assert_eq!(groups[0]["sym"], json!("A"));
    assert_eq!(
        (
            groups[0]["n"].clone(),
            groups[0]["sum"].clone(),
            groups[0]["first"].clone(),
            groups[0]["last"].clone()
        ),
        (json!(3), json!(6), json!(1), json!(5))
    );
    close(&groups[0]["avg"], 33.1 / 3.0);
    let mean = 33.1 / 3.0;
    let var =
        ((10.0f64 - mean).powi(2) + (11.0f64 - mean).powi(2) + (12.1f64 - mean).powi(2)) / 2.0;
    close(&groups[0]["sd"], var.sqrt());
    assert_eq!(
        (groups[0]["lo"].clone(), groups[0]["hi"].clone()),
        (json!(10), json!(12.1))
    );
    close(&groups[1]["sd"], 2.0f64.sqrt());
    assert_eq!(groups[1]["n"], json!(2));

    let dupes = json!([{ "a": 1, "b": 2 }, { "a": 1, "b": 3 }, { "a": 1, "b": 2 }, { "a": null }]);
    assert_eq!(
        ok(
            &i,
            json!({ "records": dupes, "steps": [{ "dedupe": ["a"] }] })
        )
        .await["records"],
        json!([{ "a": 1, "b": 2 }, { "a": null }])
    );
    assert_eq!(
        ok(
            &i,
            json!({ "records": dupes, "steps": [{ "dedupe": [] }, { "limit": 2 }] })
        )
        .await["records"],
        json!([{ "a": 1, "b": 2 }, { "a": 1, "b": 3 }])
    );
    // Sorting puts missing values last in both orders, and is stable.
    let mixed = json!([{ "k": 2, "i": 0 }, { "i": 1 }, { "k": 10, "i": 2 }, { "k": 2, "i": 3 }]);
    let order = |out: Value| -> Vec<Value> {
        out["records"]
            .as_array()
            .map(|r| r.iter().map(|r| r["i"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        order(
            ok(
                &i,
                json!({ "records": mixed, "steps": [{ "sort": { "by": "k", "order": "desc" } }] })
            )
            .await
        ),
        [json!(2), json!(0), json!(3), json!(1)]
    );
    // A partial window, when asked for.
    let partial = ok(&i, json!({ "records": [{ "v": 1 }, { "v": 3 }, { "v": 8 }], "steps": [{ "window": { "field": "v", "size": 2, "op": "sum", "partial": true } }] })).await;
    assert_eq!(
        partial["records"],
        json!([{ "v": 1, "v_sum_2": 1 }, { "v": 3, "v_sum_2": 4 }, { "v": 8, "v_sum_2": 11 }])
    );
}

#[tokio::test]
async fn data_processor_errors_name_the_step_and_the_record() {
    let i = Subject::of("BaseDataProcessor")
        .start(json!({ "steps": [{ "limit": 1 }, { "explode": "x" }] }))
        .await;
    fails_with(
        &i,
        json!([{ "a": 1 }]),
        &["InputError: settings.steps[1]: unknown step \"explode\""],
    )
    .await;
    let i = Subject::of("BaseDataProcessor").start(json!({})).await;
    let records = json!([{ "price": 1 }, { "price": 2 }, { "price": "x" }]);
    fails_with(
        &i,
        json!({ "records": records, "steps": [{ "window": { "field": "price", "size": 2 } }] }),
        &["steps[0].window: records[2].price is \"x\", expected a number"],
    )
    .await;
    fails_with(&i, json!({ "records": records, "steps": [{ "limit": 5 }, { "compute": { "d": { "op": "div", "args": ["price", "qty"] } } }] }), &["steps[1].compute.d: records[0].qty is nothing, expected a number"]).await;
    fails_with(&i, json!({ "records": records, "steps": [{ "compute": { "d": { "op": "pow", "args": [1, 2] } } }] }), &["steps[0].compute.d.op: expected one of \"add\""]).await;
    fails_with(&i, json!({ "records": records, "steps": [{ "compute": { "d": { "op": "sub", "args": [1] } } }] }), &["steps[0].compute.d.args: \"sub\" takes 2 arguments, got 1"]).await;
    fails_with(&i, json!({ "records": records, "steps": [{ "groupBy": { "by": "price", "aggregates": { "s": { "op": "sum" } } } }] }), &["steps[0].groupBy.aggregates.s.field: expected the field to sum"]).await;
    fails_with(
        &i,
        json!({ "records": records, "steps": [{ "filter": { "field": "price", "op": "near" } }] }),
        &["steps[0].filter.op: unknown operator \"near\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "records": [1, 2] }),
        &["records[0]: expected an object, got 1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "records": records, "steps": [{ "limit": -1 }] }),
        &["steps[0].limit: expected an integer ≥ 0, got -1"],
    )
    .await;
    // Division by zero is null, not Infinity.
    assert_eq!(ok(&i, json!({ "records": [{ "a": 1, "b": 0 }], "steps": [{ "compute": { "r": { "op": "div", "args": ["a", "b"] } } }] })).await["records"], json!([{ "a": 1, "b": 0, "r": null }]));
}

#[tokio::test]
async fn data_validator_sorts_records_into_valid_and_invalid() {
    let config = json!({
        "schema": { "type": "object", "properties": { "email": { "type": "string", "format": "email" } } },
        "rules": [
            { "unique": ["id"] }, { "range": { "field": "age", "min": 0, "max": 130 } },
            { "required": ["id", "email"] }, { "pattern": { "field": "code", "pattern": "^[A-Z]{3}$" } },
            { "custom": "adultsOnly" }
        ]
    });
    let body = "adultsOnly(record) { return record.age !== undefined && record.age < 18 ? 'must be an adult' : null; }";
    let i = Subject::of("BaseDataValidator")
        .body(body)
        .start(config)
        .await;
    let out = ok(
        &i,
        json!([
            { "id": 1, "email": "a@b.co", "age": 30, "code": "ABC" },
            { "id": 1, "email": "nope", "age": 200 },
            { "email": "c@d.io", "age": 12, "code": "abc" },
            "not a record"
        ]),
    )
    .await;
    assert_eq!(
        out["summary"],
        json!({ "total": 4, "valid": 1, "invalid": 3 })
    );
    assert_eq!(
        out["valid"],
        json!([{ "id": 1, "email": "a@b.co", "age": 30, "code": "ABC" }])
    );
    let messages = |k: usize| -> Vec<String> {
        out["invalid"][k]["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["path"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(out["invalid"][0]["index"], json!(1));
    assert_eq!(
        messages(0),
        [
            "records[1].email expected an email address, got \"nope\"",
            "records[1].id duplicates records[0] on id",
            "records[1].age expected a number in [0, 130], got 200",
        ]
    );
    assert_eq!(
        messages(1),
        [
            "records[2].id is required",
            "records[2].code expected a string matching /^[A-Z]{3}$/, got \"abc\"",
            "records[2] must be an adult",
        ]
    );
    assert_eq!(
        messages(2),
        ["records[3] expected object, got \"not a record\""]
    );
    fails_with(
        &i,
        json!({ "records": "x" }),
        &["records: expected an array"],
    )
    .await;
    let broken = Subject::of("BaseDataValidator")
        .start(json!({ "rules": [{ "between": {} }] }))
        .await;
    fails_with(&broken, json!([]), &["ConfigError: settings.rules[0]: a rule is one of {unique}, {range}, {required}, {pattern}, {custom}"]).await;
    assert_eq!(
        ok(&i, json!({ "records": [] })).await["summary"],
        json!({ "total": 0, "valid": 0, "invalid": 0 })
    );
}

#[tokio::test]
async fn data_transformer_maps_casts_and_flattens() {
    let config = json!({
        "mapping": {
            "customer.name": { "from": "Name", "trim": true },
            "customer.email": { "from": "contact.Email", "trim": true, "lowercase": true },
            "total": { "from": "Total", "cast": "number" },
            "paid": { "from": "Paid", "cast": "boolean", "default": false },
            "at": { "from": "When", "cast": "date" },
            "code": { "from": "Code", "uppercase": true },
            "source": { "value": "import" },
            "id": "Id"
        }
    });
    let i = Subject::of("BaseDataTransformer").start(config).await;
    assert_eq!(
        ok(&i, json!({ "Id": 7, "Name": "  Ann ", "contact": { "Email": " A@B.CO" }, "Total": "12.50", "When": 1704164645000_i64, "Code": "x1", "Ignored": 1 })).await,
        json!({ "customer": { "name": "Ann", "email": "a@b.co" }, "total": 12.5, "paid": false,
                "at": "2024-01-02T03:04:05.000Z", "code": "X1", "source": "import", "id": 7 })
    );
    fails_with(
        &i,
        json!([{ "Total": "1" }, { "Total": "abc" }]),
        &["InputError: records[1].Total: expected a number (or numeric text) to cast, got \"abc\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "record": { "When": "someday" } }),
        &["record.When: expected a date"],
    )
    .await;
    fails_with(
        &i,
        json!({ "record": { "Paid": "maybe" } }),
        &["record.Paid: expected a boolean"],
    )
    .await;
    let keep = Subject::of("BaseDataTransformer").start(json!({ "mapping": { "n": { "from": "n", "cast": "number" } }, "keepUnmapped": true, "drop": ["secret", "nested.pin"] })).await;
    assert_eq!(
        ok(
            &keep,
            json!({ "records": [{ "n": "3", "secret": "x", "nested": { "pin": 1, "keep": 2 } }] })
        )
        .await,
        json!({ "records": [{ "n": 3, "nested": { "keep": 2 } }] })
    );
    let nested = json!({ "a": { "b": 1, "c": [1, { "d": 2 }] }, "e": {}, "f": "x" });
    let flat = call(&keep, "flatten", json!([nested])).await;
    assert_eq!(
        flat,
        json!({ "a.b": 1, "a.c.0": 1, "a.c.1.d": 2, "e": {}, "f": "x" })
    );
    assert_eq!(call(&keep, "unflatten", json!([flat])).await, nested);
    assert_eq!(
        call(&keep, "flatten", json!([{ "a": { "b": 1 } }, "/"])).await,
        json!({ "a/b": 1 })
    );
    let broken = Subject::of("BaseDataTransformer")
        .start(json!({ "mapping": { "x": { "from": "y", "cast": "decimal" } } }))
        .await;
    fails_with(&broken, json!({}), &["ConfigError: settings.mapping.x.cast: expected one of \"number\", \"string\", \"boolean\", \"date\""]).await;
}
