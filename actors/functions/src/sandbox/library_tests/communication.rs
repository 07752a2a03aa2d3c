//! `library/communication.js`: `BaseMessageProcessor`, `BaseProtocolHandler`, `BaseSerializer`,
//! `BaseConnector`.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[tokio::test]
async fn message_processor_dispatches_dedupes_and_routes() {
    let host = FakeHost::echo();
    let body = "
      async onOrderCreated(payload, message) {
        if (payload.fail) throw new Error('cannot take order ' + message.id);
        return { total: payload.qty * payload.price };
      }";
    let i = Subject::of("BaseMessageProcessor")
        .body(body)
        .on(&host)
        .start(json!({ "routes": { "invoice.paid": "audit" }, "dedupeSize": 2 }))
        .await;
    let order =
        json!({ "id": "m1", "type": "order.created", "payload": { "qty": 2, "price": 3.5 } });
    assert_eq!(
        ok(&i, order.clone()).await,
        json!({ "id": "m1", "type": "order.created", "status": "handled", "result": { "total": 7 } })
    );
    assert_eq!(
        ok(&i, order.clone()).await,
        json!({ "id": "m1", "type": "order.created", "status": "duplicate" })
    );
    let paid = json!({ "id": 7, "type": "invoice.paid", "payload": { "n": 1 } });
    assert_eq!(
        ok(&i, paid.clone()).await,
        json!({ "id": 7, "type": "invoice.paid", "status": "handled", "result": { "target": "audit", "input": paid } })
    );
    assert_eq!(sent(&host), vec![("audit".to_string(), paid)]);
    // The LRU holds two ids: m1 has been pushed out by 7 and m9.
    ok(
        &i,
        json!({ "id": "m9", "type": "order.created", "payload": { "qty": 1, "price": 1 } }),
    )
    .await;
    assert_eq!(ok(&i, order.clone()).await["status"], json!("handled"));
    // A failed message is not remembered, so its retry is handled.
    let failing = json!({ "id": "f1", "type": "order.created", "payload": { "fail": true } });
    fails_with(&i, failing, &["cannot take order f1"]).await;
    assert_eq!(
        ok(
            &i,
            json!({ "id": "f1", "type": "order.created", "payload": { "qty": 1, "price": 2 } })
        )
        .await["status"],
        json!("handled")
    );
    // A batch reports each message and never aborts.
    let batch = ok(
        &i,
        json!({ "messages": [
            { "id": "b1", "type": "order.created", "payload": { "qty": 1, "price": 1 } },
            { "id": "b2", "type": "order.cancelled", "payload": {} },
            { "type": "order.created" },
            { "id": "b1", "type": "order.created", "payload": { "qty": 1, "price": 1 } }
        ]}),
    )
    .await;
    let statuses: Vec<&Value> = batch
        .as_array()
        .map(|b| b.iter().map(|r| &r["status"]).collect())
        .unwrap_or_default();
    assert_eq!(
        statuses,
        [
            &json!("handled"),
            &json!("failed"),
            &json!("failed"),
            &json!("duplicate")
        ]
    );
    let unknown = batch[1]["error"].as_str().unwrap_or_default();
    assert!(
        unknown.contains("no handler for \"order.cancelled\"")
            && unknown.contains("onOrderCancelled()")
            && unknown.contains("known: \"invoice.paid\", onOrderCreated()"),
        "{unknown}"
    );
    assert!(
        batch[2]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("message.id: expected a string or a number, got nothing")
    );
    fails_with(
        &i,
        json!({ "id": "x", "type": "refund.issued" }),
        &["InputError: message.type: no handler for \"refund.issued\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "id": "x", "type": "" }),
        &["message.type: expected a non-empty string"],
    )
    .await;
}

#[tokio::test]
async fn message_processor_dedupes_through_kv_when_asked() {
    let host = FakeHost::echo();
    let body = "async onPing(payload) { return 'pong'; }";
    let config = json!({ "dedupeStore": "kv", "dedupePrefix": "seen/" });
    let processor = Subject::of("BaseMessageProcessor").body(body).on(&host);
    let first = processor.start(config.clone()).await;
    assert_eq!(
        ok(&first, json!({ "id": "p1", "type": "ping" })).await["result"],
        json!("pong")
    );
    assert!(host.kv().get("seen/p1").is_some());
    // Another instance on the same store sees the id.
    let second = processor.start(config).await;
    assert_eq!(
        ok(&second, json!({ "id": "p1", "type": "ping" })).await["status"],
        json!("duplicate")
    );
}

#[tokio::test]
async fn protocol_handler_routes_like_http() {
    let host = FakeHost::echo();
    let body = "
      async getOrder(req) { return { id: req.params.id, query: req.query, trace: req.headers['x-trace'] ?? null }; }
      async putOrder(req) { return { status: 201, headers: { 'Location': '/orders/' + req.params.id }, body: req.body }; }
      async boom(req) { throw new Error('kaput'); }
      async picky(req) { throw new klf.KlfInputError('body.n: expected a number', { path: 'body.n' }); }
      async files(req) { return req.params['*']; }
      async onError(error) { this.ctx.log.warn('handled ' + error.message); }";
    let config = json!({ "routes": [
        { "method": "GET", "path": "/orders/:id", "handler": "getOrder" },
        { "method": ["PUT", "PATCH"], "path": "/orders/:id", "handler": "putOrder" },
        { "method": "POST", "path": "/orders", "handler": { "call": "pricing" } },
        { "method": "GET", "path": "/boom", "handler": "boom" },
        { "method": "POST", "path": "/picky", "handler": "picky" },
        { "method": "*", "path": "/files/*", "handler": "files" }
    ]});
    let i = Subject::of("BaseProtocolHandler")
        .body(body)
        .on(&host)
        .start(config)
        .await;
    let json_type = json!({ "content-type": "application/json" });
    assert_eq!(
        ok(&i, json!({ "method": "get", "path": "/orders/a%20b?x=1&x=2&y=z", "headers": { "X-Trace": "t1" } })).await,
        json!({ "status": 200, "headers": json_type, "body": { "id": "a b", "query": { "x": ["1", "2"], "y": "z" }, "trace": "t1" } })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "method": "PATCH", "path": "/orders/9/", "body": { "n": 1 } })
        )
        .await,
        json!({ "status": 201, "headers": { "location": "/orders/9", "content-type": "application/json" }, "body": { "n": 1 } })
    );
    let created = ok(
        &i,
        json!({ "method": "POST", "path": "/orders", "body": { "sku": "x" } }),
    )
    .await;
    assert_eq!(created["body"]["target"], json!("pricing"));
    assert_eq!(created["body"]["input"]["body"], json!({ "sku": "x" }));
    assert_eq!(
        ok(&i, json!({ "method": "DELETE", "path": "/orders/1" })).await,
        json!({ "status": 405, "headers": { "allow": "GET, PUT, PATCH", "content-type": "application/json" },
                "body": { "error": "DELETE is not allowed on /orders/1 (allowed: GET, PUT, PATCH)" } })
    );
    assert_eq!(
        ok(&i, json!({ "method": "GET", "path": "/nowhere" })).await["body"],
        json!({ "error": "no route for GET /nowhere", "paths": ["/orders/:id", "/orders", "/boom", "/picky", "/files/*"] })
    );
    assert_eq!(
        ok(&i, json!({ "method": "GET", "path": "/nowhere" })).await["status"],
        json!(404)
    );
    assert_eq!(
        ok(&i, json!({ "method": "GET", "path": "/boom" })).await,
        json!({ "status": 500, "headers": json_type, "body": { "error": "kaput", "name": "Error" } })
    );
    assert!(
        host.logs()
            .contains(&(LogLevel::Warn, "handled kaput".to_string()))
    );
    assert_eq!(
        ok(&i, json!({ "method": "POST", "path": "/picky" })).await["status"],
        json!(400)
    );
    assert_eq!(
        ok(&i, json!({ "method": "HEAD", "path": "/files/a/b.txt" })).await["body"],
        json!("a/b.txt")
    );
    // Malformed requests are 400s that say what is wrong.
    for (request, says) in [
        (
            json!({ "path": "/orders/1" }),
            "request.method: expected an HTTP method",
        ),
        (
            json!({ "method": "GET", "path": "orders" }),
            "request.path: expected a path starting with \"/\"",
        ),
        (
            json!({ "method": "GET", "path": "/orders/%E0%A4%A" }),
            "malformed percent-encoding",
        ),
        (
            json!({ "method": "GET", "path": "/x", "headers": { "a": 1 } }),
            "request.headers.a: expected a string",
        ),
        (json!("GET /"), "request: expected an object"),
    ] {
        let response = ok(&i, request.clone()).await;
        assert_eq!(response["status"], json!(400), "{request}");
        let error = response["body"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{error:?} should contain {says:?}");
    }
    let broken = Subject::of("BaseProtocolHandler")
        .start(json!({ "routes": [{ "path": "/x", "handler": "missing" }] }))
        .await;
    fails_with(
        &broken,
        json!({ "method": "GET", "path": "/x" }),
        &["ConfigError: settings.routes[0].handler: the class has no method \"missing\""],
    )
    .await;
}

#[tokio::test]
async fn serializer_round_trips_csv_json_base64_and_querystrings() {
    let i = Subject::of("BaseSerializer").start(json!({})).await;
    let records = json!([
        { "name": "Ann \"A\"", "note": "a,b", "n": 1 },
        { "name": "Bob", "note": "line1\nline2", "n": 2.5, "vip": true },
        { "name": " padded ", "n": null }
    ]);
    let columns = json!(["name", "note", "n", "vip"]);
    let csv = call(&i, "toCSV", json!([records, { "columns": columns }])).await;
    assert_eq!(
        csv,
        json!(
            "name,note,n,vip\n\"Ann \"\"A\"\"\",\"a,b\",1,\nBob,\"line1\nline2\",2.5,true\n\" padded \",,,\n"
        )
    );
    assert_eq!(
        call(
            &i,
            "fromCSV",
            json!([csv, { "types": { "n": "number", "vip": "boolean" } }])
        )
        .await,
        json!([
            { "name": "Ann \"A\"", "note": "a,b", "n": 1, "vip": null },
            { "name": "Bob", "note": "line1\nline2", "n": 2.5, "vip": true },
            { "name": " padded ", "note": "", "n": null, "vip": null }
        ])
    );
    // Without columns, every key in the order first seen (serde_json hands keys over sorted).
    let default = call(&i, "toCSV", json!([records])).await;
    assert!(
        default
            .as_str()
            .is_some_and(|t| t.starts_with("n,name,note,vip\n1,\"Ann")),
        "{default}"
    );
    // CRLF, another delimiter, a quoted CRLF inside a field, no header.
    assert_eq!(
        call(
            &i,
            "fromCSV",
            json!(["a;b\r\n1;\"x\r\ny\"\r\n\r\n2;3", { "delimiter": ";", "header": false }])
        )
        .await,
        json!([["a", "b"], ["1", "x\r\ny"], ["2", "3"]])
    );
    assert_eq!(
        call(
            &i,
            "toCSV",
            json!([[{ "a": 1 }], { "delimiter": "\t", "columns": ["a", "b"] }])
        )
        .await,
        json!("a\tb\n1\t\n")
    );
    // Errors name the line.
    for (text, says) in [
        (
            "a,b\n1,\"2\n3,4\n",
            "CSV line 2: a quoted field is never closed",
        ),
        (
            "a,b\n1,2\n\"3\"\n4,5,6\n",
            "CSV line 3: 1 fields, expected 2 (columns: a, b)",
        ),
        (
            "a,b\n1,x\"y\n",
            "CSV line 2: a quote inside an unquoted field",
        ),
        (
            "a,b\n1,2\n3,\"4\"x\n",
            "CSV line 3: unexpected \"x\" after a closing quote",
        ),
        (
            "a,a\n1,2\n",
            "CSV line 1: the header names column \"a\" twice",
        ),
    ] {
        call_fails_with(&i, "fromCSV", json!([text]), &["InputError", says]).await;
    }
    call_fails_with(
        &i,
        "fromCSV",
        json!(["a,b\n1,2\n\n3,zz\n", { "types": { "b": "number" } }]),
        &["CSV line 4, column \"b\": expected a number, got \"zz\""],
    )
    .await;
    call_fails_with(
        &i,
        "fromCSV",
        json!(["a\n1\n", { "delimiter": "ab" }]),
        &["options.delimiter: expected one character"],
    )
    .await;

    let text = "héllo ✓ 😀";
    assert_eq!(
        call(&i, "toBase64", json!([text])).await,
        json!("aMOpbGxvIOKckyDwn5iA")
    );
    assert_eq!(
        call(&i, "fromBase64", json!(["aMOpbGxvIOKckyDwn5iA"])).await,
        json!(text)
    );
    // URL-safe alphabet and missing padding are accepted.
    assert_eq!(
        call(&i, "fromBase64", json!(["Pz8_YT8-aGk"])).await,
        json!("???a?>hi")
    );
    call_fails_with(
        &i,
        "fromBase64",
        json!(["a$b="]),
        &["text: not base64 (\"$\" at offset 1)"],
    )
    .await;
    call_fails_with(&i, "fromBase64", json!(["/w=="]), &["text: not UTF-8 text"]).await;
    call_fails_with(
        &i,
        "fromJSON",
        json!(["{\"a\": 1,\n \"b\": }"]),
        &["InputError: text: not valid JSON at line 2, column 7 (offset 15)"],
    )
    .await;
    assert_eq!(
        call(&i, "fromJSON", json!(["[1,{\"a\":null}]"])).await,
        json!([1, { "a": null }])
    );
    assert_eq!(
        call(&i, "toJSON", json!([{ "a": [1] }, { "pretty": true }])).await,
        json!("{\n  \"a\": [\n    1\n  ]\n}")
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "encode", "to": "query", "data": { "a": [1, 2], "b": "x y&z" } })
        )
        .await,
        json!({ "data": "a=1&a=2&b=x%20y%26z" })
    );
    assert_eq!(
        call(&i, "fromQuery", json!(["?a=1&a=2&b=x+y%21&c"])).await,
        json!({ "a": ["1", "2"], "b": "x y!", "c": "" })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "convert", "from": "csv", "to": "json", "data": "x,y\n1,2\n" })
        )
        .await,
        json!({ "data": "[{\"x\":\"1\",\"y\":\"2\"}]" })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "decode", "from": "base64", "data": "aGk=" })
        )
        .await,
        json!({ "data": "hi" })
    );
    fails_with(
        &i,
        json!({ "op": "convert", "from": "csv", "to": "yaml", "data": "a\n" }),
        &["format: expected one of \"json\", \"csv\", \"base64\", \"query\", got \"yaml\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "pack" }),
        &["input.op: expected one of \"encode\", \"decode\", \"convert\""],
    )
    .await;
}

/// Fails the first `failures` calls with a host error, then answers `{ok: input}`.
fn flaky(failures: usize) -> (Arc<FakeHost>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let host = FakeHost::builder()
        .on_call(move |target, input| {
            if seen.fetch_add(1, Ordering::SeqCst) < failures {
                return Err(SandboxError::Host(format!("{target} is down")));
            }
            Ok(json!({ "ok": input }))
        })
        .build();
    (host, count)
}

#[tokio::test]
async fn connector_retries_host_errors_and_gives_up_with_the_last_one() {
    let (host, count) = flaky(2);
    let i = Subject::of("BaseConnector")
        .on(&host)
        .start(json!({ "target": "pricing", "retries": 2 }))
        .await;
    assert_eq!(
        ok(&i, json!({ "sku": "a" })).await,
        json!({ "result": { "ok": { "sku": "a" } }, "attempts": 3 })
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);

    let (host, count) = flaky(usize::MAX);
    let i = Subject::of("BaseConnector")
        .on(&host)
        .start(json!({ "target": "pricing", "retries": 1 }))
        .await;
    // The host's error reaches the caller typed, after 1 + retries attempts.
    match i.execute(json!({}), meta()).await {
        Err(SandboxError::Host(message)) => {
            assert!(message.contains("pricing is down"), "{message}")
        }
        other => panic!("expected the host error, got {other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // A denied call (an undeclared dependency) is not retried.
    let (host, count) = flaky(0);
    let i = Subject::of("BaseConnector")
        .on(&host)
        .start(json!({ "target": "stranger" }))
        .await;
    match i.execute(json!({}), meta()).await {
        Err(SandboxError::CapabilityDenied { capability, .. }) => assert_eq!(capability, "call"),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 0);
    // send() with an explicit target.
    assert_eq!(
        call(&i, "send", json!([{ "n": 1 }, "dep"])).await,
        json!({ "result": { "ok": { "n": 1 } }, "attempts": 1 })
    );
}

#[tokio::test]
async fn connector_rate_limits_with_a_token_bucket() {
    let (host, count) = flaky(0);
    let config = json!({ "target": "dep", "rateLimit": { "perSecond": 0.001, "burst": 2 } });
    let i = Subject::of("BaseConnector").on(&host).start(config).await;
    ok(&i, json!(1)).await;
    ok(&i, json!(2)).await;
    fails_with(
        &i,
        json!(3),
        &["RateLimited: rate limit of 0.001/s (burst 2) reached; retry after"],
    )
    .await;
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // With a short wait allowed, the call waits for its token instead.
    let (host, count) = flaky(0);
    let config = json!({ "target": "dep", "rateLimit": { "perSecond": 100, "burst": 1 }, "waitForToken": true, "maxWaitMs": 50 });
    let i = Subject::of("BaseConnector").on(&host).start(config).await;
    for n in 0..3 {
        ok(&i, json!(n)).await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let unconfigured = Subject::of("BaseConnector").start(json!({})).await;
    fails_with(
        &unconfigured,
        json!({}),
        &["ConfigError: settings.target: expected the name of the function to call"],
    )
    .await;
    let bad = Subject::of("BaseConnector")
        .start(json!({ "target": "dep", "rateLimit": { "perSecond": -1 } }))
        .await;
    fails_with(
        &bad,
        json!({}),
        &["settings.rateLimit.perSecond: expected a number > 0, got -1"],
    )
    .await;
}
