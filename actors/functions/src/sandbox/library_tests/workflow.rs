//! `library/workflow.js`: `BaseWorkflowEngine`, `BaseTaskScheduler`, `BaseProcessManager`,
//! `BaseOrchestrator`.

use super::*;

#[tokio::test]
async fn workflow_engine_runs_a_dag_in_concurrent_waves() {
    let host = FakeHost::builder()
        .on_call(|target, input| match target {
            "pricing" => Ok(json!({ "price": input["qty"].as_f64().unwrap_or(0.0) * 2.5 })),
            _ => Ok(json!({ "stock": 7 })),
        })
        .build();
    let body = "
      events = [];
      async work(input) {
        this.events.push('start ' + input.name);
        const answer = await this.ctx.call('dep', input);
        this.events.push('end ' + input.name);
        return { name: input.name, stock: answer.stock };
      }
      async total(input) { return { total: input.price * input.factor, label: input.label }; }
      async trace() { return this.events; }";
    let config = json!({
        "steps": [
            { "id": "price", "call": "pricing", "input": { "qty": "$input.qty" } },
            { "id": "stockA", "method": "work", "input": { "name": "a" } },
            { "id": "stockB", "method": "work", "input": { "name": "b" } },
            { "id": "sum", "method": "total", "after": ["stockA", "stockB"],
              "input": { "price": "$steps.price.output.price", "factor": 2, "label": "$$literal" } },
            { "id": "audit", "call": "audit", "after": ["sum"], "when": { "field": "input.audit", "value": true } }
        ],
        "output": { "total": "$steps.sum.output.total", "stocks": ["$steps.stockA.output.stock", "$steps.stockB.output.stock"] }
    });
    let i = Subject::of("BaseWorkflowEngine")
        .body(body)
        .on(&host)
        .start(config)
        .await;
    let out = ok(&i, json!({ "qty": 4 })).await;
    assert_eq!(out["output"], json!({ "total": 20, "stocks": [7, 7] }));
    assert_eq!(out["steps"]["sum"]["status"], json!("ok"));
    assert_eq!(
        out["steps"]["sum"]["output"],
        json!({ "total": 20, "label": "$literal" })
    );
    assert_eq!(out["steps"]["audit"]["status"], json!("skipped"));
    // stockA and stockB ran in the same wave: both started before either ended.
    let events = call(&i, "trace", json!([])).await;
    let events: Vec<&str> = events
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(&events[..2], ["start a", "start b"], "{events:?}");
    assert_eq!(
        host.calls()
            .iter()
            .filter(|c| c.target == "pricing")
            .count(),
        1
    );
    assert_eq!(
        ok(&i, json!({ "qty": 1, "audit": true })).await["steps"]["audit"]["status"],
        json!("ok")
    );
}

#[tokio::test]
async fn workflow_engine_stops_dependants_of_a_failed_step_and_checks_the_graph() {
    let host = FakeHost::builder()
        .on_call(|target, _| match target {
            "pricing" => Err(SandboxError::Host("pricing failed: no price".to_string())),
            _ => Ok(json!("fine")),
        })
        .build();
    let body = "async local(input) { return input; }";
    let steps = json!([
        { "id": "a", "call": "pricing" },
        { "id": "b", "call": "dep", "after": ["a"] },
        { "id": "c", "method": "local", "input": { "n": 1 } }
    ]);
    let engine = Subject::of("BaseWorkflowEngine").on(&host);
    let i = engine.body(body).start(json!({ "steps": steps })).await;
    fails_with(&i, json!({}), &["WorkflowError: workflow failed at step \"a\": HostError: host error: pricing failed: no price (not run: b)"]).await;
    assert!(host.calls().iter().all(|c| c.target != "dep"));
    // The trace travels on the error for a subclass to use.
    let probe = "async probe(steps) { try { await this.run({}, steps); } catch (e) { return { name: e.name, steps: e.steps }; } }";
    let p = engine
        .body(&format!("{body}\n{probe}"))
        .start(json!({}))
        .await;
    let caught = call(&p, "probe", json!([steps])).await;
    assert_eq!(caught["name"], json!("WorkflowError"));
    assert_eq!(caught["steps"]["a"]["status"], json!("failed"));
    assert_eq!(
        caught["steps"]["b"],
        json!({ "status": "skipped", "reason": "step \"a\" failed", "ms": 0 })
    );
    assert_eq!(caught["steps"]["c"]["output"], json!({ "n": 1 }));
    // An optional step may fail; its dependants still run.
    let optional = json!([{ "id": "a", "call": "pricing", "optional": true }, { "id": "b", "method": "local", "after": ["a"], "input": 2 }]);
    let out = call(&p, "run", json!([{}, optional])).await;
    assert_eq!(out["output"], json!(2));
    assert_eq!(out["steps"]["a"]["status"], json!("failed"));
    // The graph is checked before anything runs.
    for (steps, says) in [
        (
            json!([{ "id": "a", "method": "local", "after": ["b"] }, { "id": "b", "method": "local", "after": ["c"] }, { "id": "c", "method": "local", "input": "$steps.a.output" }]),
            "steps: the steps form a cycle: a → b → c → a",
        ),
        (
            json!([{ "id": "a", "method": "local", "after": ["zz"] }]),
            "steps[0]: depends on an unknown step \"zz\" (steps: a)",
        ),
        (
            json!([{ "id": "a", "method": "local" }, { "id": "a", "call": "dep" }]),
            "steps[1].id: \"a\" is also the id of steps[0]",
        ),
        (
            json!([{ "id": "a", "method": "local", "input": { "x": "$inptu.n" } }]),
            "steps[0].input.x: \"$inptu.n\" refers to nothing",
        ),
        (
            json!([{ "id": "a", "method": "nope" }]),
            "steps[0].method: the class has no method \"nope\"",
        ),
        (
            json!([{ "id": "a", "call": "dep", "method": "local" }]),
            "steps[0]: a step has either \"call\"",
        ),
    ] {
        call_fails_with(&p, "run", json!([{}, steps]), &["InputError", says]).await;
    }
    assert!(host.calls().iter().all(|c| c.target != "dep"));
}

#[tokio::test]
async fn task_scheduler_computes_next_runs() {
    let i = Subject::of("BaseTaskScheduler").start(json!({})).await;
    // 2024-01-01T10:30:00Z.
    let from = 1_704_105_000_000_i64;
    let hour = 3_600_000_i64;
    assert_eq!(
        ok(
            &i,
            json!({ "op": "nextRun", "spec": { "everyMs": hour }, "from": from })
        )
        .await,
        json!({ "at": from + hour / 2 })
    );
    assert_eq!(
        call(&i, "nextRun", json!([{ "everyMs": 60_000 }, from])).await,
        json!(from + 60_000)
    );
    assert_eq!(
        call(&i, "nextRun", json!([{ "at": "09:15" }, from])).await,
        json!(from + 22 * hour + 45 * 60_000)
    );
    assert_eq!(
        call(&i, "nextRun", json!([{ "at": ["09:15", "18:00"] }, from])).await,
        json!(from + 7 * hour + 30 * 60_000)
    );
    // Exactly at a run time, the next one is a day later.
    assert_eq!(
        call(&i, "nextRun", json!([{ "at": "10:30" }, from])).await,
        json!(from + 24 * hour)
    );
    call_fails_with(
        &i,
        "nextRun",
        json!([{ "at": "25:00" }, from]),
        &["InputError: spec.at: expected a UTC time \"HH:MM\" (00:00 to 23:59), got \"25:00\""],
    )
    .await;
    call_fails_with(
        &i,
        "nextRun",
        json!([{ "cron": "* * * * *" }, from]),
        &["spec: expected {everyMs} or {at: \"HH:MM\"}, got keys cron"],
    )
    .await;
    call_fails_with(
        &i,
        "nextRun",
        json!([{ "everyMs": 0 }, from]),
        &["spec.everyMs: expected an integer ≥ 1, got 0"],
    )
    .await;
    fails_with(&i, json!({ "op": "sometime" }), &["input.op: expected one of \"after\", \"every\", \"next\", \"cancel\", \"list\", \"nextRun\""]).await;
    assert!(
        ok(&i, json!({ "op": "nextRun", "spec": { "everyMs": 1000 } })).await["at"].is_number()
    );
}

#[tokio::test]
async fn task_scheduler_schedules_through_the_host() {
    let host = FakeHost::echo();
    let scheduler = Subject::of("BaseTaskScheduler")
        .on(&host)
        .grant(&["schedule"]);
    let i = scheduler.start(json!({ "target": "audit" })).await;
    assert_eq!(
        ok(
            &i,
            json!({ "op": "after", "ms": 500, "target": "dep", "input": { "x": 1 } })
        )
        .await,
        json!({ "id": "s-1" })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "every", "ms": 1000, "input": { "tick": true } })
        )
        .await,
        json!({ "id": "s-2" })
    );
    let before = now_ms();
    let next = ok(&i, json!({ "op": "next", "spec": { "everyMs": 60000 } })).await;
    let after = now_ms();
    assert_eq!(next["id"], json!("s-3"));
    let at = next["at"].as_u64().unwrap_or_default();
    assert!(
        at % 60_000 == 0 && at > before && at <= after + 60_000,
        "{next}"
    );
    let booked = host.scheduled();
    assert_eq!(booked.len(), 3);
    assert_eq!(
        (
            booked[0].1.target.as_str(),
            booked[0].1.delay,
            booked[0].1.every,
            booked[0].1.input.clone()
        ),
        ("dep", Duration::from_millis(500), None, json!({ "x": 1 }))
    );
    assert_eq!(
        (booked[1].1.target.as_str(), booked[1].1.every),
        ("audit", Some(Duration::from_secs(1)))
    );
    assert!(
        booked[2].1.delay <= Duration::from_secs(60),
        "{:?}",
        booked[2].1
    );
    let listed = ok(&i, json!({ "op": "list" })).await["schedules"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    assert_eq!(
        (listed[1]["kind"].clone(), listed[1]["intervalMs"].clone()),
        (json!("every"), json!(1000))
    );
    assert_eq!(
        ok(&i, json!({ "op": "cancel", "id": "s-1" })).await,
        json!({ "cancelled": true })
    );
    assert_eq!(
        ok(&i, json!({ "op": "cancel", "id": "s-1" })).await,
        json!({ "cancelled": false })
    );
    fails_with(
        &i,
        json!({ "op": "every", "ms": 50 }),
        &["InputError: ms: expected an integer ≥ 100, got 50"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "after", "ms": -5 }),
        &["ms: expected an integer ≥ 0, got -5"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "after", "ms": 10, "target": 7 }),
        &["target: expected a function name, got 7"],
    )
    .await;
    // The host decides which targets are allowed.
    match i
        .execute(
            json!({ "op": "after", "ms": 10, "target": "stranger" }),
            meta(),
        )
        .await
    {
        Err(error) => assert!(
            error.to_string().contains("not a declared dependency"),
            "{error}"
        ),
        Ok(output) => panic!("scheduled an undeclared target: {output}"),
    }
    let untargeted = scheduler.start(json!({})).await;
    fails_with(
        &untargeted,
        json!({ "op": "after", "ms": 10 }),
        &["ConfigError: settings.target: expected the function to call"],
    )
    .await;
}

#[tokio::test]
async fn process_manager_moves_jobs_through_their_lifecycle() {
    let host = FakeHost::echo();
    let i = Subject::of("BaseProcessManager")
        .on(&host)
        .start(json!({}))
        .await;
    let created = ok(
        &i,
        json!({ "op": "start", "id": "job1", "data": { "n": 1 } }),
    )
    .await;
    assert_eq!(
        (created["state"].clone(), created["history"].clone()),
        (json!("created"), json!([]))
    );
    assert_eq!(host.kv().get("process/job1"), Some(created.clone()));
    let running = ok(&i, json!({ "op": "send", "id": "job1", "event": "start" })).await;
    assert_eq!(running["state"], json!("running"));
    fails_with(&i, json!({ "op": "send", "id": "job1", "event": "resume" }), &["InputError: event: process \"job1\" in state running cannot take \"resume\" (allowed: pause, complete, fail, cancel)"]).await;
    ok(&i, json!({ "op": "send", "id": "job1", "event": "pause" })).await;
    ok(&i, json!({ "op": "send", "id": "job1", "event": "resume" })).await;
    let done = ok(
        &i,
        json!({ "op": "send", "id": "job1", "event": "complete", "data": { "out": 5 } }),
    )
    .await;
    assert_eq!(done["state"], json!("completed"));
    assert_eq!(done["data"], json!({ "n": 1, "out": 5 }));
    let steps: Vec<(Value, Value, Value)> = done["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| (e["from"].clone(), e["event"].clone(), e["to"].clone()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        steps,
        [
            (json!("created"), json!("start"), json!("running")),
            (json!("running"), json!("pause"), json!("paused")),
            (json!("paused"), json!("resume"), json!("running")),
            (json!("running"), json!("complete"), json!("completed")),
        ]
    );
    assert!(
        done["history"][0]["at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    fails_with(
        &i,
        json!({ "op": "send", "id": "job1", "event": "cancel" }),
        &["cannot take \"cancel\" (it is completed, a final state)"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "send", "id": "ghost", "event": "start" }),
        &["NotFound: id: no process \"ghost\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "start", "id": "job1" }),
        &["ConflictError: process \"job1\" already exists (state completed)"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "start", "id": "" }),
        &["id: expected a non-empty string"],
    )
    .await;
    ok(&i, json!({ "op": "start", "id": "job2" })).await;
    assert_eq!(
        ok(&i, json!({ "op": "list" })).await["processes"]
            .as_array()
            .map(|p| p
                .iter()
                .map(|p| (p["id"].clone(), p["state"].clone()))
                .collect::<Vec<_>>()),
        Some(vec![
            (json!("job1"), json!("completed")),
            (json!("job2"), json!("created"))
        ])
    );
    assert_eq!(
        ok(&i, json!({ "op": "list", "state": "created" })).await["processes"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        ok(&i, json!({ "op": "status", "id": "job2" })).await["process"]["state"],
        json!("created")
    );
    assert_eq!(
        ok(&i, json!({ "op": "status", "id": "nope" })).await,
        json!({ "process": null })
    );
}

#[tokio::test]
async fn process_manager_takes_a_custom_machine_and_a_veto() {
    let body = "async onTransition(process, t) { if (t.event === 'approve' && !process.data.signed) throw new Error('approval needs a signature'); }";
    let config = json!({
        "initial": "draft", "terminal": ["approved", "rejected"], "states": null,
        "transitions": { "draft": { "submit": "review" }, "review": { "approve": "approved", "reject": "rejected", "revise": "draft" } },
        "historyLimit": 2
    });
    let i = Subject::of("BaseProcessManager")
        .body(body)
        .start(config)
        .await;
    assert_eq!(
        ok(&i, json!({ "op": "start", "id": 1 })).await["state"],
        json!("draft")
    );
    ok(&i, json!({ "op": "send", "id": 1, "event": "submit" })).await;
    fails_with(
        &i,
        json!({ "op": "send", "id": 1, "event": "approve" }),
        &["approval needs a signature"],
    )
    .await;
    // The veto left the process as it was.
    assert_eq!(
        ok(&i, json!({ "op": "status", "id": 1 })).await["process"]["state"],
        json!("review")
    );
    ok(&i, json!({ "op": "send", "id": 1, "event": "revise" })).await;
    ok(&i, json!({ "op": "send", "id": 1, "event": "submit" })).await;
    let approved = ok(
        &i,
        json!({ "op": "send", "id": 1, "event": "approve", "data": { "signed": true } }),
    )
    .await;
    assert_eq!(approved["state"], json!("approved"));
    assert_eq!(approved["history"].as_array().map(Vec::len), Some(2));
    let broken = Subject::of("BaseProcessManager")
        .start(json!({ "transitions": { "created": { "go": "runing" } } }))
        .await;
    fails_with(
        &broken,
        json!({ "op": "start", "id": "x" }),
        &["ConfigError: settings.transitions: state \"runing\" has no transitions and is not in settings.terminal"],
    )
    .await;
    let declared = Subject::of("BaseProcessManager")
        .start(
            json!({ "states": ["created", "running", "completed"], "terminal": ["completed"],
                "transitions": { "created": { "go": "runing" } } }),
        )
        .await;
    fails_with(
        &declared,
        json!({ "op": "start", "id": "x" }),
        &["ConfigError: settings.transitions.created.go: \"runing\" is not one of settings.states (created, running, completed)"],
    )
    .await;
}

#[tokio::test]
async fn orchestrator_fans_out_with_bounded_concurrency_and_fans_in() {
    let host = FakeHost::builder()
        .on_call(|target, input| {
            if input.get("fail").is_some() {
                return Err(SandboxError::Host(format!("{target} refused")));
            }
            Ok(json!({ "target": target, "v": input["v"].clone() }))
        })
        .build();
    let body = "
      inFlight = 0; maxInFlight = 0;
      async slowSquare(x) {
        this.inFlight++; this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        await this.ctx.call('dep', { v: x });
        this.inFlight--;
        return x * x;
      }
      peak() { return this.maxInFlight; }
      product(values) { return values.reduce((a, b) => a * b, 1); }";
    let i = Subject::of("BaseOrchestrator")
        .body(body)
        .on(&host)
        .start(json!({ "target": "dep" }))
        .await;
    let out = ok(&i, json!({ "inputs": [{ "v": 1 }, { "v": 2, "fail": true }, { "v": 3 }], "reduce": { "op": "sum", "field": "v" } })).await;
    assert_eq!(
        out["results"],
        json!([
            { "index": 0, "ok": true, "result": { "target": "dep", "v": 1 } },
            { "index": 1, "ok": false, "error": "HostError: host error: dep refused" },
            { "index": 2, "ok": true, "result": { "target": "dep", "v": 3 } }
        ])
    );
    assert_eq!(out["value"], json!(4));
    let squares = call(
        &i,
        "fanOut",
        json!([{ "method": "slowSquare" }, [1, 2, 3, 4, 5, 6, 7], { "concurrency": 3 }]),
    )
    .await;
    let values: Vec<Value> = squares
        .as_array()
        .map(|r| r.iter().map(|r| r["result"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(values, [1, 4, 9, 16, 25, 36, 49].map(|v| json!(v)));
    assert_eq!(call(&i, "peak", json!([])).await, json!(3));
    assert_eq!(
        call(&i, "fanIn", json!([squares, { "op": "avg" }])).await,
        json!(20)
    );
    assert_eq!(
        call(&i, "fanIn", json!([squares, "product"])).await,
        json!(25_401_600)
    );
    assert_eq!(
        call(
            &i,
            "fanIn",
            json!([[{ "a": [1] }, { "a": [2, 3] }, { "b": 1 }], { "op": "concat", "field": "a" }])
        )
        .await,
        json!([1, 2, 3])
    );
    assert_eq!(
        call(
            &i,
            "fanIn",
            json!([[{ "a": 1 }, { "b": 2 }, { "a": 3 }], "merge"])
        )
        .await,
        json!({ "a": 3, "b": 2 })
    );
    assert_eq!(
        call(&i, "fanIn", json!([[1, null, 3], { "op": "count" }])).await,
        json!(2)
    );
    assert_eq!(call(&i, "fanIn", json!([[4, 9, 2], "max"])).await, json!(9));
    // failFast: nothing new starts after the first failure.
    let before = host.calls().len();
    let fast = call(&i, "fanOut", json!(["dep", [{ "fail": 1 }, { "v": 1 }, { "v": 2 }], { "concurrency": 1, "failFast": true }])).await;
    assert_eq!(
        fast[1],
        json!({ "index": 1, "ok": false, "skipped": true, "error": "not started: an earlier call failed (failFast)" })
    );
    assert_eq!(host.calls().len(), before + 1);
    let gathered = ok(
        &i,
        json!({ "targets": ["pricing", { "method": "slowSquare" }], "input": 3 }),
    )
    .await;
    assert_eq!(
        gathered["results"],
        json!([
            { "target": "pricing", "ok": true, "result": { "target": "pricing", "v": null } },
            { "target": "slowSquare", "ok": true, "result": 9 }
        ])
    );
    fails_with(
        &i,
        json!({ "inputs": "x" }),
        &["InputError: inputs: expected an array"],
    )
    .await;
    fails_with(
        &i,
        json!({ "inputs": [1], "reduce": { "op": "median" } }),
        &["reducer.op: expected one of \"sum\""],
    )
    .await;
    call_fails_with(
        &i,
        "fanIn",
        json!([[1, "x"], "sum"]),
        &["results[1]: expected a finite number, got \"x\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "inputs": [1], "target": { "method": "nope" } }),
        &["target.method: the class has no method \"nope\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "targets": [] }),
        &["targets: expected at least one target"],
    )
    .await;
    let untargeted = Subject::of("BaseOrchestrator").start(json!({})).await;
    fails_with(
        &untargeted,
        json!({ "inputs": [1] }),
        &["ConfigError: settings.target"],
    )
    .await;
}
