//! `library/security.js`: `BaseValidator`, `BaseAuthorizer`, `BaseAuthenticator`, `BaseEncryptor`.

use super::*;

#[tokio::test]
async fn validator_checks_and_asserts_against_the_configured_schema() {
    let config = json!({ "schema": {
        "type": "object", "required": ["name", "age"],
        "properties": { "name": { "type": "string" }, "age": { "type": "integer", "minimum": 0 } }
    }});
    let i = Subject::of("BaseValidator").start(config).await;
    assert_eq!(
        ok(&i, json!({ "name": "Ann", "age": 3 })).await,
        json!({ "valid": true, "errors": [] })
    );
    assert_eq!(
        ok(&i, json!({ "age": -1 })).await,
        json!({ "valid": false, "errors": [
            { "path": "input.name", "message": "is required" },
            { "path": "input.age", "message": "expected a number ≥ 0, got -1" }
        ]})
    );
    call_fails_with(
        &i,
        "assert",
        json!([{ "name": 5, "age": 1.5 }]),
        &["InputError: invalid input: input.age: expected integer, got 1.5; input.name: expected string, got 5"],
    )
    .await;
    assert_eq!(
        call(&i, "assert", json!([{ "name": "Bo", "age": 1 }])).await,
        json!({ "name": "Bo", "age": 1 })
    );
    // A schema given to check wins over the configured one.
    assert_eq!(
        call(&i, "check", json!(["x", { "type": "string" }])).await["valid"],
        json!(true)
    );
    let unconfigured = Subject::of("BaseValidator").start(json!({})).await;
    fails_with(
        &unconfigured,
        json!({}),
        &["ConfigError", "settings.schema: expected a JSON schema"],
    )
    .await;
}

#[tokio::test]
async fn authorizer_denies_over_allows_and_matches_roles_globs_and_conditions() {
    let config = json!({ "policies": [
        { "id": "readers", "effect": "allow", "subjects": ["role:reader"], "actions": ["read", "list"], "resources": ["doc:*"] },
        { "id": "no-secrets", "effect": "deny", "subjects": ["*"], "actions": ["*"], "resources": ["doc:secret-*"] },
        { "id": "owners", "effect": "allow", "subjects": ["user:*"], "actions": ["write"], "resources": ["doc:*"],
          "when": { "field": "context.owner", "op": "eq", "valueFrom": "subject" } },
        { "id": "admins", "effect": "allow", "subjects": ["role:admin"], "actions": ["*"], "resources": ["*"] }
    ]});
    let i = Subject::of("BaseAuthorizer").start(config).await;
    assert_eq!(
        ok(&i, json!({ "subject": "user:ann", "roles": ["reader"], "action": "read", "resource": "doc:1" })).await,
        json!({ "allowed": true, "effect": "allow", "policy": "readers", "reason": "allowed by policy \"readers\"" })
    );
    // Deny overrides allow, even for an admin.
    assert_eq!(
        ok(&i, json!({ "subject": "user:ann", "roles": ["reader", "admin"], "action": "read", "resource": "doc:secret-plan" })).await,
        json!({ "allowed": false, "effect": "deny", "policy": "no-secrets", "reason": "denied by policy \"no-secrets\"" })
    );
    let owner = ok(&i, json!({ "subject": "user:ann", "action": "write", "resource": "doc:1", "context": { "owner": "user:ann" } })).await;
    assert_eq!(
        (owner["allowed"].clone(), owner["policy"].clone()),
        (json!(true), json!("owners"))
    );
    assert_eq!(
        ok(&i, json!({ "subject": "user:bob", "action": "write", "resource": "doc:1", "context": { "owner": "user:ann" } })).await,
        json!({ "allowed": false, "effect": "deny", "policy": null, "reason": "no policy matched; the default is deny" })
    );
    call_fails_with(
        &i,
        "assertAllowed",
        json!([{ "subject": "user:bob", "action": "delete", "resource": "doc:1" }]),
        &["AuthError: forbidden: user:bob may not delete doc:1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "subject": "user:ann", "resource": "doc:1" }),
        &["InputError: input.action: expected a non-empty string, got nothing"],
    )
    .await;
    fails_with(
        &i,
        json!({ "subject": "a", "action": "read", "resource": "doc:1", "roles": "reader" }),
        &["input.roles: expected an array"],
    )
    .await;
    assert_eq!(
        ok(
            &i,
            json!({ "subject": "x", "roles": ["admin"], "action": "purge", "resource": "db" })
        )
        .await["allowed"],
        json!(true)
    );
    let open = Subject::of("BaseAuthorizer")
        .start(json!({ "defaultEffect": "allow" }))
        .await;
    assert_eq!(
        ok(
            &open,
            json!({ "subject": "a", "action": "b", "resource": "c" })
        )
        .await["allowed"],
        json!(true)
    );
    let broken = Subject::of("BaseAuthorizer")
        .start(json!({ "policies": [{ "id": "p", "effect": "permit" }] }))
        .await;
    fails_with(&broken, json!({ "subject": "a", "action": "b", "resource": "c" }), &["ConfigError: settings.policies[0].effect: expected one of \"allow\", \"deny\", got \"permit\""]).await;
}

#[tokio::test]
async fn authenticator_checks_bearer_tokens_and_api_keys_from_a_secret() {
    let host = FakeHost::builder()
        .secret(
            "api-tokens",
            "# subject:token\nalice:tok-alice-123\n\n bob : tok-bob-456 \n",
        )
        .secret("broken-tokens", "alice:ok\nno-colon-here\n")
        .build();
    let grants = ["crypto", "secret"];
    let secrets = ["api-tokens", "broken-tokens"];
    let authenticator = Subject::of("BaseAuthenticator").on(&host);
    let granted = authenticator.grant(&grants).secrets(&secrets);
    let bearer = granted.start(json!({ "tokensSecret": "api-tokens" })).await;
    assert_eq!(
        ok(
            &bearer,
            json!({ "headers": { "Authorization": "Bearer tok-alice-123" } })
        )
        .await,
        json!({ "authenticated": true, "subject": "alice", "scheme": "bearer" })
    );
    assert_eq!(
        ok(&bearer, json!({ "token": "tok-bob-456" })).await["subject"],
        json!("bob")
    );
    fails_with(
        &bearer,
        json!({ "headers": { "authorization": "Bearer tok-mallory" } }),
        &["AuthError: unknown bearer token"],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "headers": {} }),
        &["AuthError: missing credentials: no token and no \"authorization\" header"],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "headers": { "authorization": "Basic YTpi" } }),
        &["AuthError: the \"authorization\" header is not \"Bearer <token>\""],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "token": 42 }),
        &["InputError: input.token: expected a non-empty string, got 42"],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "headers": "Bearer x" }),
        &["input.headers: expected an object"],
    )
    .await;
    assert_eq!(
        ok(&bearer, json!({ "token": "tok-alice-123" })).await["subject"],
        json!("alice")
    );

    let soft = granted
        .start(json!({ "tokensSecret": "api-tokens", "rejectWithResult": true }))
        .await;
    assert_eq!(
        ok(&soft, json!({ "token": "nope" })).await,
        json!({ "authenticated": false, "reason": "unknown bearer token", "code": "unknown_token" })
    );
    let keys = granted
        .start(json!({ "scheme": "api-key", "header": "X-Api-Key", "tokensSecret": "api-tokens" }))
        .await;
    assert_eq!(
        ok(&keys, json!({ "headers": { "x-api-key": "tok-bob-456" } })).await,
        json!({ "authenticated": true, "subject": "bob", "scheme": "api-key" })
    );
    fails_with(
        &keys,
        json!({ "headers": { "x-api-key": "tok-bob-457" } }),
        &["AuthError: unknown API key"],
    )
    .await;
    // A malformed secret is named by line, never shown.
    let broken = granted
        .start(json!({ "tokensSecret": "broken-tokens" }))
        .await;
    let message = fails(&broken, json!({ "token": "ok" })).await;
    assert!(
        message.contains("ConfigError: secret \"broken-tokens\" line 2 is not \"subject:token\""),
        "{message}"
    );
    assert!(!message.contains("no-colon-here"), "{message}");
    // Without the grants, the host's refusal reaches the caller as it is.
    let ungranted = authenticator
        .start(json!({ "tokensSecret": "api-tokens" }))
        .await;
    match ungranted
        .execute(json!({ "token": "tok-bob-456" }), meta())
        .await
    {
        Err(SandboxError::CapabilityDenied { capability, .. }) => assert_eq!(capability, "secret"),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn authenticator_verifies_hmac_signatures_and_timestamps() {
    let host = FakeHost::builder()
        .secret("webhook-key", "whsec_test_key")
        .build();
    let config = json!({ "scheme": "hmac", "hmacSecret": "webhook-key", "hmacSubject": "billing-webhook", "toleranceMs": 60000 });
    let i = Subject::of("BaseAuthenticator")
        .on(&host)
        .grant(&["crypto", "secret"])
        .secrets(&["webhook-key"])
        .start(config)
        .await;
    let body = "{\"event\":\"paid\",\"amount\":12}";
    let at = now_ms();
    let signature = match crypto::hmac_hex("sha256", "whsec_test_key", &format!("{at}.{body}")) {
        Ok(signature) => signature,
        Err(error) => panic!("{error}"),
    };
    let signed = |body: &str, at: u64, signature: &str| json!({ "headers": { "X-Signature": format!("sha256={signature}"), "X-Timestamp": at.to_string() }, "body": body });
    assert_eq!(
        ok(&i, signed(body, at, &signature)).await,
        json!({ "authenticated": true, "subject": "billing-webhook", "scheme": "hmac" })
    );
    // The same from explicit fields, and the class computes the same signature.
    assert_eq!(
        ok(
            &i,
            json!({ "signature": signature, "timestamp": at, "body": body })
        )
        .await["authenticated"],
        json!(true)
    );
    assert_eq!(call(&i, "sign", json!([body, at])).await, json!(signature));
    fails_with(
        &i,
        signed("{\"event\":\"paid\",\"amount\":1200}", at, &signature),
        &["AuthError: bad signature: it does not match the body and timestamp"],
    )
    .await;
    fails_with(&i, signed(body, at + 1, &signature), &["bad signature"]).await;
    fails_with(
        &i,
        signed(body, at, "zz"),
        &["bad signature: not a hex string"],
    )
    .await;
    let stale = at - 120_000;
    let old = match crypto::hmac_hex("sha256", "whsec_test_key", &format!("{stale}.{body}")) {
        Ok(signature) => signature,
        Err(error) => panic!("{error}"),
    };
    fails_with(
        &i,
        signed(body, stale, &old),
        &["AuthError: stale timestamp:", "at most 60000 ms allowed"],
    )
    .await;
    fails_with(
        &i,
        json!({ "headers": { "x-timestamp": at.to_string() }, "body": body }),
        &["AuthError: missing signature"],
    )
    .await;
    fails_with(
        &i,
        json!({ "signature": signature, "body": body }),
        &["AuthError: missing timestamp"],
    )
    .await;
    fails_with(
        &i,
        json!({ "signature": signature, "timestamp": "yesterday", "body": body }),
        &["AuthError: bad timestamp \"yesterday\""],
    )
    .await;
    assert_eq!(
        ok(&i, signed(body, at, &signature)).await["authenticated"],
        json!(true)
    );
}

#[tokio::test]
async fn encryptor_seals_fields_bound_to_their_place() {
    let host = FakeHost::builder()
        .secret("field-key", "correct horse battery staple")
        .secret("other-key", "another passphrase")
        .build();
    let grants = ["crypto", "secret"];
    let config = json!({ "keySecret": "field-key", "fields": ["ssn", "card.number", "tags", "notes"], "aadField": "id" });
    let encryptor = Subject::of("BaseEncryptor").on(&host).grant(&grants);
    let i = encryptor.secrets(&["field-key"]).start(config).await;
    let record = json!({ "id": "c1", "name": "Ann", "ssn": "123-45-6789", "card": { "number": "4111 1111", "exp": "12/30" }, "tags": ["vip", 3] });
    let sealed = ok(&i, json!({ "op": "encrypt", "record": record })).await;
    assert_eq!(
        sealed["meta"],
        json!({ "encrypted": ["ssn", "card.number", "tags"], "skipped": ["notes"] })
    );
    let out = &sealed["record"];
    assert_eq!(
        (out["name"].clone(), out["card"]["exp"].clone()),
        (json!("Ann"), json!("12/30"))
    );
    for (field, encoding) in [
        (&out["ssn"], "text"),
        (&out["card"]["number"], "text"),
        (&out["tags"], "json"),
    ] {
        assert_eq!(field["alg"], json!("chacha20-poly1305"));
        assert_eq!(field["encoding"], json!(encoding));
        assert!(
            field["nonce"].is_string() && field["ciphertext"].is_string(),
            "{field}"
        );
        assert!(
            !field.to_string().contains("4111") && !field.to_string().contains("123-45"),
            "{field}"
        );
    }
    let opened = ok(&i, json!({ "op": "decrypt", "record": out })).await;
    assert_eq!(
        opened,
        json!({ "record": record, "meta": { "decrypted": ["ssn", "card.number", "tags"], "skipped": ["notes"] } })
    );
    // Tampered, moved to another field, or moved to another record: none decrypts.
    let mut tampered = out.clone();
    let ciphertext = tampered["ssn"]["ciphertext"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let flipped = if ciphertext.starts_with('A') {
        ciphertext.replacen('A', "B", 1)
    } else {
        format!("A{}", &ciphertext[1..])
    };
    tampered["ssn"]["ciphertext"] = json!(flipped);
    fails_with(&i, json!({ "op": "decrypt", "record": tampered }), &["CryptoError: record.ssn: cannot decrypt (tampered ciphertext, wrong key or wrong associated data)"]).await;
    let mut moved = out.clone();
    moved["card"]["number"] = out["ssn"].clone();
    fails_with(
        &i,
        json!({ "op": "decrypt", "record": moved }),
        &["CryptoError: record.card.number: cannot decrypt"],
    )
    .await;
    let mut other_record = out.clone();
    other_record["id"] = json!("c2");
    fails_with(
        &i,
        json!({ "op": "decrypt", "record": other_record }),
        &["CryptoError: record.ssn"],
    )
    .await;
    // Another key does not open it either.
    let wrong = encryptor
        .secrets(&["other-key"])
        .start(json!({ "keySecret": "other-key", "fields": ["ssn"], "aadField": "id" }))
        .await;
    fails_with(
        &wrong,
        json!({ "op": "decrypt", "record": out }),
        &["CryptoError: record.ssn: cannot decrypt"],
    )
    .await;
    // Texts, with and without associated data.
    let envelope = call(&i, "encrypt", json!(["hello", "order-7"])).await;
    assert_eq!(
        call(&i, "decrypt", json!([envelope, "order-7"])).await,
        json!("hello")
    );
    call_fails_with(
        &i,
        "decrypt",
        json!([envelope, "order-8"]),
        &["CryptoError: cannot decrypt"],
    )
    .await;
    call_fails_with(&i, "decrypt", json!([{ "alg": "x" }]), &["InputError: envelope: expected an encrypted envelope {alg, nonce, ciphertext}, got an object"]).await;
    call_fails_with(
        &i,
        "encrypt",
        json!([42]),
        &["InputError: text: expected a string, got 42"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "decrypt", "record": { "id": "c1", "ssn": "plain" } }),
        &["record.ssn: expected an encrypted envelope"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "encrypt", "record": [] }),
        &["input.record: expected an object"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "encrypt", "record": { "ssn": "1" } }),
        &["record.id: expected a value (settings.aadField binds envelopes to it)"],
    )
    .await;
    assert_eq!(
        ok(&i, json!({ "op": "decrypt", "record": out })).await["record"],
        record
    );
    // An undeclared secret is the host's refusal, typed, not a CryptoError.
    let undeclared = encryptor.start(json!({ "keySecret": "field-key" })).await;
    match undeclared
        .execute(json!({ "$call": "encrypt", "args": ["x"] }), meta())
        .await
    {
        Err(SandboxError::CapabilityDenied { detail, .. }) => {
            assert!(detail.contains("not declared"), "{detail}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    let unconfigured = encryptor.start(json!({})).await;
    call_fails_with(
        &unconfigured,
        "encrypt",
        json!(["x"]),
        &["ConfigError: settings.keySecret: expected the name of a secret"],
    )
    .await;
}
