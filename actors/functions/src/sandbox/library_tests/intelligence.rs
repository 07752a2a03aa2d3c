//! `library/intelligence.js`: `BaseModelProcessor`, `BaseDecisionEngine`, `BaseLearningEngine`,
//! `BasePredictor`.

use klf_model::ModelRequest;

use super::*;
use crate::sandbox::test_host::model_reply;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test]
async fn model_processor_scores_local_models() {
    let config = json!({ "model": { "kind": "logistic", "weights": { "age": 0.05, "income": 0.00001 },
                                     "bias": -3, "threshold": 0.5, "labels": ["no", "yes"] } });
    let i = Subject::of("BaseModelProcessor").start(config).await;
    let out = ok(&i, json!({ "age": 40, "income": 50000 })).await;
    close(&out["score"], sigmoid(-3.0 + 2.0 + 0.5));
    assert_eq!(out["label"], json!("no"));
    let all = ok(&i, json!({ "records": [{ "id": "a", "age": 80, "income": 100000 }, { "id": "b", "age": 20, "income": 0 }] })).await;
    close(&all["records"][0]["score"], sigmoid(2.0));
    assert_eq!(
        (
            all["records"][0]["label"].clone(),
            all["records"][0]["id"].clone()
        ),
        (json!("yes"), json!("a"))
    );
    close(&all["records"][1]["score"], sigmoid(-2.0));
    let explained = call(&i, "explain", json!([{ "age": 40, "income": 50000 }])).await;
    assert_eq!(
        (
            explained[0]["feature"].clone(),
            explained[1]["feature"].clone()
        ),
        (json!("age"), json!("income"))
    );
    close(&explained[0]["contribution"], 2.0);
    close(&explained[1]["contribution"], 0.5);
    fails_with(
        &i,
        json!({ "features": { "age": 40 } }),
        &["InputError: features.income: expected a number (the model weighs it), got nothing"],
    )
    .await;
    fails_with(
        &i,
        json!({ "records": [{ "age": 1, "income": 2 }, { "age": "old", "income": 1 }] }),
        &["records[1].age: expected a number"],
    )
    .await;
    let linear = Subject::of("BaseModelProcessor")
        .start(
            json!({ "model": { "kind": "linear", "weights": { "x": 2, "y": -1 }, "bias": 0.5 } }),
        )
        .await;
    assert_eq!(
        ok(&linear, json!({ "features": { "x": 3, "y": 1 } })).await,
        json!({ "score": 5.5 })
    );
    let broken = Subject::of("BaseModelProcessor")
        .start(json!({ "model": { "kind": "tree" } }))
        .await;
    fails_with(&broken, json!({}), &["ConfigError: settings.model.kind: expected one of \"linear\", \"logistic\", \"provider\", got \"tree\""]).await;
}

#[tokio::test]
async fn model_processor_asks_the_provider_with_a_filled_prompt() {
    let host = FakeHost::builder()
        .model(|request: &ModelRequest| {
            let last = request
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let text = if last.contains("broken") {
                "I cannot rate that".to_string()
            } else if request.json {
                format!(
                    "```json\n{{\"sentiment\": \"positive\", \"about\": {}}}\n```",
                    serde_json::to_string(&last).unwrap_or_default()
                )
            } else {
                format!("echo: {last}")
            };
            Ok(model_reply(text, 12, 3))
        })
        .build();
    let config = json!({ "model": { "kind": "provider", "system": "You rate reviews.", "prompt": "Rate: {{review}} ({{stars}} stars, {{meta}})",
                                      "json": true, "maxTokens": 50, "temperature": 0 } });
    let processor = Subject::of("BaseModelProcessor").on(&host);
    let granted = processor.grant(&["model"]);
    let i = granted.start(config).await;
    let out = ok(
        &i,
        json!({ "review": "great", "stars": 5, "meta": { "lang": "en" } }),
    )
    .await;
    let prompt = "Rate: great (5 stars, {\"lang\":\"en\"})";
    assert_eq!(
        out["json"],
        json!({ "sentiment": "positive", "about": prompt })
    );
    assert_eq!(
        (out["model"].clone(), out["usage"].clone()),
        (
            json!("test-model"),
            json!({ "inputTokens": 12, "outputTokens": 3 })
        )
    );
    assert!(
        out["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("```json"))
    );
    let sent = host.model_requests();
    let request = &sent[0];
    let messages: Vec<(String, String)> = request
        .messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect();
    assert_eq!(
        messages,
        [
            ("system".to_string(), "You rate reviews.".to_string()),
            ("user".to_string(), prompt.to_string())
        ]
    );
    assert_eq!(
        (request.max_tokens, request.temperature, request.json),
        (Some(50), Some(0.0), true)
    );
    fails_with(
        &i,
        json!({ "review": "great" }),
        &["InputError: input.stars: is required by the prompt template"],
    )
    .await;
    fails_with(
        &i,
        json!({ "review": "broken", "stars": 1, "meta": 0 }),
        &["the model did not answer JSON", "\"I cannot rate that\""],
    )
    .await;
    let all = ok(
        &i,
        json!({ "records": [{ "review": "ok", "stars": 3, "meta": 1 }] }),
    )
    .await;
    assert_eq!(all["records"][0]["review"], json!("ok"));
    assert_eq!(
        all["records"][0]["inference"]["json"]["sentiment"],
        json!("positive")
    );
    // Without a template, the input is the prompt.
    let plain = granted
        .start(json!({ "model": { "kind": "provider" } }))
        .await;
    assert_eq!(
        ok(&plain, json!("hello")).await["text"],
        json!("echo: hello")
    );
    assert_eq!(
        ok(&plain, json!({ "prompt": "hi" })).await["text"],
        json!("echo: hi")
    );
    assert_eq!(
        ok(&plain, json!({ "a": 1 })).await["text"],
        json!("echo: {\"a\":1}")
    );
    fails_with(&plain, json!(null), &["input: expected a prompt"]).await;
    // No provider: the host's typed error, with its advice, reaches the caller.
    let bare = FakeHost::echo();
    let none = granted
        .on(&bare)
        .start(json!({ "model": { "kind": "provider" } }))
        .await;
    match none.execute(json!("hello"), meta()).await {
        Err(SandboxError::ModelUnavailable(message)) => {
            assert!(message.contains("KLF_MODEL_BASE_URL"), "{message}")
        }
        other => panic!("expected ModelUnavailable, got {other:?}"),
    }
    let ungranted = processor
        .start(json!({ "model": { "kind": "provider" } }))
        .await;
    match ungranted.execute(json!("hello"), meta()).await {
        Err(SandboxError::CapabilityDenied { capability, .. }) => assert_eq!(capability, "model"),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn decision_engine_applies_rules_by_priority() {
    let rules = json!([
        { "id": "gold", "priority": 10, "when": { "field": "spend", "op": "gte", "value": 1000 }, "then": { "tier": "gold" } },
        { "id": "silver", "priority": 5, "when": { "field": "spend", "op": "gte", "value": 100 }, "then": { "tier": "silver" } },
        { "id": "vip", "priority": 20, "when": { "all": [{ "field": "vip", "value": true }, { "field": "country", "op": "in", "value": ["NL", "BE"] }] }, "then": { "tier": "vip" } },
        { "id": "also-silver", "priority": 5, "when": { "field": "referrals", "op": "gt", "value": 3 }, "then": { "tier": "silver+" } }
    ]);
    let first = Subject::of("BaseDecisionEngine")
        .start(json!({ "rules": rules, "default": { "tier": "none" } }))
        .await;
    assert_eq!(
        ok(
            &first,
            json!({ "spend": 1500, "vip": true, "country": "NL" })
        )
        .await,
        json!({ "decision": { "tier": "vip" }, "matched": ["vip"], "trace": [{ "id": "vip", "matched": true }] })
    );
    assert_eq!(
        ok(&first, json!({ "spend": 150, "referrals": 5 })).await,
        json!({ "decision": { "tier": "silver" }, "matched": ["silver"], "trace": [
            { "id": "vip", "matched": false }, { "id": "gold", "matched": false }, { "id": "silver", "matched": true }] })
    );
    assert_eq!(
        ok(&first, json!({ "spend": 1 })).await["decision"],
        json!({ "tier": "none" })
    );
    let all = Subject::of("BaseDecisionEngine")
        .start(json!({ "rules": rules, "mode": "all" }))
        .await;
    assert_eq!(
        ok(
            &all,
            json!({ "spend": 1500, "vip": true, "country": "BE", "referrals": 4 })
        )
        .await["decision"],
        json!([{ "tier": "vip" }, { "tier": "gold" }, { "tier": "silver" }, { "tier": "silver+" }])
    );
    assert_eq!(
        ok(
            &all,
            json!({ "spend": 1500, "vip": true, "country": "BE", "referrals": 4 })
        )
        .await["matched"],
        json!(["vip", "gold", "silver", "also-silver"])
    );
    assert_eq!(
        ok(&all, json!({})).await,
        json!({ "decision": null, "matched": [], "trace": [
        { "id": "vip", "matched": false }, { "id": "gold", "matched": false }, { "id": "silver", "matched": false }, { "id": "also-silver", "matched": false }] })
    );
    fails_with(&all, json!("facts"), &["facts: expected an object"]).await;
    let bad = Subject::of("BaseDecisionEngine").start(json!({ "rules": [
        { "id": "ok", "when": true, "then": 1 },
        { "id": "broken", "when": { "any": [{ "field": "a", "op": "between", "value": [1, 2] }] } }
    ]})).await;
    fails_with(&bad, json!({ "a": 1 }), &["InputError: settings.rules[1] (\"broken\").when.any[0].op: unknown operator \"between\""]).await;
    let dup = Subject::of("BaseDecisionEngine")
        .start(json!({ "rules": [{ "id": "a", "when": true }, { "id": "a", "when": false }] }))
        .await;
    fails_with(&dup, json!({}), &["two rules are called \"a\""]).await;
}

#[tokio::test]
async fn learning_engine_fits_an_incremental_regression_persisted_in_kv() {
    let host = FakeHost::echo();
    let config = json!({ "stateKey": "model/price" });
    let engine = Subject::of("BaseLearningEngine").on(&host);
    let i = engine.start(config.clone()).await;
    fails_with(
        &i,
        json!({ "op": "predict", "x": [1, 2] }),
        &["has not learned anything yet"],
    )
    .await;
    // y = 1 + 2a + 3b, learned in two batches.
    let y = |a: f64, b: f64| 1.0 + 2.0 * a + 3.0 * b;
    let stats = ok(&i, json!({ "op": "learn", "samples": [{ "x": [1, 2], "y": y(1.0, 2.0) }, { "x": [2, 1], "y": y(2.0, 1.0) }] })).await;
    assert_eq!(
        stats,
        json!({ "count": 2, "mean": 8.5, "variance": 0.5, "coefficients": null, "intercept": null })
    );
    fails_with(
        &i,
        json!({ "op": "predict", "x": [1, 1] }),
        &[
            "not enough data to fit 2 coefficient(s)",
            "settings.lambda > 0",
        ],
    )
    .await;
    let stats = ok(&i, json!({ "op": "learn", "samples": [{ "x": [3, 5], "y": y(3.0, 5.0) }, { "x": [0, 0], "y": y(0.0, 0.0) }, { "x": [4, 4], "y": y(4.0, 4.0) }] })).await;
    assert_eq!(stats["count"], json!(5));
    let ys = [9.0, 8.0, 22.0, 1.0, 21.0];
    let mean = ys.iter().sum::<f64>() / 5.0;
    close(&stats["mean"], mean);
    close(
        &stats["variance"],
        ys.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0,
    );
    close_all(&stats["coefficients"], &[2.0, 3.0]);
    close(&stats["intercept"], 1.0);
    close(
        &ok(&i, json!({ "op": "predict", "x": [10, 10] })).await["prediction"],
        51.0,
    );
    // The state is in kv: another instance on the same store predicts the same.
    assert!(host.kv().get("model/price").is_some());
    let other = engine.start(config.clone()).await;
    close(
        &ok(&other, json!({ "op": "predict", "x": [-1, 2] })).await["prediction"],
        5.0,
    );
    // Bad samples are refused as a whole batch.
    fails_with(
        &i,
        json!({ "op": "learn", "samples": [{ "x": [1, 1], "y": 6 }, { "x": [1], "y": 1 }] }),
        &["InputError: samples[1].x: expected 2 features (as the model was trained with), got 1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "learn", "samples": [{ "x": [1, "2"], "y": 6 }] }),
        &["samples[0].x[1]: expected a finite number, got \"2\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "learn", "samples": [{ "x": [1, 2] }] }),
        &["samples[0].y: expected a finite number, got nothing"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "predict", "x": [1, 2, 3] }),
        &["x: expected 2 features, got 3"],
    )
    .await;
    assert_eq!(ok(&i, json!({ "op": "stats" })).await["count"], json!(5));
    assert_eq!(
        ok(&i, json!({ "op": "reset" })).await,
        json!({ "reset": true })
    );
    assert_eq!(
        ok(&i, json!({ "op": "stats" })).await,
        json!({ "count": 0, "mean": null, "variance": null, "coefficients": null, "intercept": null })
    );
    // One feature as a plain number; ridge shrinks the slope.
    let samples = json!([{ "x": 1, "y": 2 }, { "x": 2, "y": 4 }, { "x": 3, "y": 6 }]);
    let plain = ok(&i, json!({ "op": "learn", "samples": samples })).await;
    close_all(&plain["coefficients"], &[2.0]);
    close(&plain["intercept"], 0.0);
    let ridge = engine
        .start(json!({ "stateKey": "ridge", "lambda": 2 }))
        .await;
    let shrunk = ok(&ridge, json!({ "op": "learn", "samples": samples })).await;
    // Centred: slope = Sxy / (Sxx + λ) = 4 / (2 + 2) = 1; intercept = ȳ - slope·x̄ = 4 - 2 = 2.
    close_all(&shrunk["coefficients"], &[1.0]);
    close(&shrunk["intercept"], 2.0);
}

#[tokio::test]
async fn predictor_computes_moving_averages_trends_and_anomalies() {
    let i = Subject::of("BasePredictor").start(json!({})).await;
    close_all(
        &call(&i, "sma", json!([[1, 2, 3, 4, 5, 6], 3])).await,
        &[2.0, 3.0, 4.0, 5.0],
    );
    close_all(
        &call(&i, "ema", json!([[10, 20, 30], 0.5])).await,
        &[10.0, 15.0, 22.5],
    );
    // A span of 3 is alpha 0.5.
    close_all(
        &call(&i, "ema", json!([[10, 20, 30], 3])).await,
        &[10.0, 15.0, 22.5],
    );
    let trend = call(&i, "linearTrend", json!([[1, 3, 5, 7]])).await;
    close(&trend["slope"], 2.0);
    close(&trend["intercept"], 1.0);
    close(&trend["r2"], 1.0);
    // A noisy series: r² from the residuals.
    let xs = [2.0, 4.0, 5.0, 4.0, 5.0];
    let noisy = call(&i, "linearTrend", json!([xs])).await;
    close(&noisy["slope"], 0.6);
    close(&noisy["intercept"], 2.8);
    let fitted: Vec<f64> = (0..5).map(|k| 2.8 + 0.6 * k as f64).collect();
    let mean = xs.iter().sum::<f64>() / 5.0;
    let ss_res: f64 = xs.iter().zip(&fitted).map(|(x, f)| (x - f).powi(2)).sum();
    let ss_tot: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
    close(&noisy["r2"], 1.0 - ss_res / ss_tot);
    close_all(
        &call(&i, "forecast", json!([[1, 3, 5, 7], 2])).await,
        &[9.0, 11.0],
    );
    close_all(
        &call(
            &i,
            "forecast",
            json!([[10, 20, 30], 2, "ema", { "alpha": 0.5 }]),
        )
        .await,
        &[22.5, 22.5],
    );
    let sd = (2.0f64 / 3.0).sqrt();
    close_all(
        &call(&i, "zScores", json!([[1, 2, 3]])).await,
        &[-1.0 / sd, 0.0, 1.0 / sd],
    );
    close_all(&call(&i, "zScores", json!([[4, 4]])).await, &[0.0, 0.0]);
    // Global: twelve ones and a 100; z = (100 - mean) / sd.
    let mut series = vec![1.0; 12];
    series.push(100.0);
    let anomalies = call(&i, "anomalies", json!([series, { "threshold": 3 }])).await;
    assert_eq!(anomalies.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (anomalies[0]["index"].clone(), anomalies[0]["value"].clone()),
        (json!(12), json!(100))
    );
    close(&anomalies[0]["z"], 12.0f64.sqrt());
    // Rolling: each point against the three before it.
    let rolling = call(
        &i,
        "anomalies",
        json!([[10, 10, 11, 10, 50, 10, 11, 11, 11, 12], { "threshold": 3, "window": 3 }]),
    )
    .await;
    let w = [10.0, 11.0, 10.0];
    let m = w.iter().sum::<f64>() / 3.0;
    let s = (w.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 3.0).sqrt();
    assert_eq!(rolling.as_array().map(Vec::len), Some(2), "{rolling}");
    assert_eq!(rolling[0]["index"], json!(4));
    close(&rolling[0]["z"], (50.0 - m) / s);
    // After three equal values, any change is infinitely unusual.
    assert_eq!(rolling[1], json!({ "index": 9, "value": 12, "z": null }));
    assert_eq!(
        ok(
            &i,
            json!({ "series": [1, 2, 3, 4], "method": "sma", "n": 2 })
        )
        .await,
        json!({ "method": "sma", "result": [1.5, 2.5, 3.5] })
    );
    let execute_trend = ok(&i, json!({ "series": [1, 3, 5, 7] })).await;
    assert_eq!(execute_trend["method"], json!("trend"));
    fails_with(
        &i,
        json!({ "series": [1], "method": "trend" }),
        &["InputError: input.series: a linear trend needs at least 2 values, got 1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "series": [1, "x", 3], "method": "sma", "n": 2 }),
        &["input.series[1]: expected a finite number, got \"x\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "series": [1, 2], "method": "sma", "n": 3 }),
        &["input.series: sma over 3 needs at least 3 values, got 2"],
    )
    .await;
    call_fails_with(
        &i,
        "ema",
        json!([[1, 2], 1.5]),
        &["alpha: expected a smoothing factor 0 < alpha ≤ 1 or a span n ≥ 1"],
    )
    .await;
    call_fails_with(
        &i,
        "anomalies",
        json!([[1, 2, 3], { "window": 3 }]),
        &["xs: anomalies over a window of 3 needs at least 4 values, got 3"],
    )
    .await;
    fails_with(
        &i,
        json!({ "series": [1, 2], "method": "arima" }),
        &["input.method: expected one of \"sma\", \"ema\", \"trend\""],
    )
    .await;
}
