//! The committed OpenAPI document (docs/openapi.json) is the one the code
//! generates and the one a running node serves, and it keeps the API's
//! conventions: bearer auth, `application/problem+json` errors.
//!
//! After changing a handler's annotations, regenerate the document with
//! `PAYNODE_UPDATE_OPENAPI=1 cargo test -p paynode-tests --test openapi`.

use std::path::PathBuf;

use paynode_tests::{test_config, workspace_root, TestNode};
use serde_json::{json, Value};

const UPDATE_VAR: &str = "PAYNODE_UPDATE_OPENAPI";

fn committed_path() -> PathBuf {
    workspace_root().join("docs/openapi.json")
}

fn committed() -> String {
    let path = committed_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\n{}",
            path.display(),
            regenerate_hint(None)
        )
    })
}

/// The file's content for a document: the generated text plus a final newline.
fn file_text(document: &str) -> String {
    format!("{}\n", document.trim_end())
}

fn regenerate_hint(fresh: Option<&PathBuf>) -> String {
    let mut hint =
        format!("regenerate it with `{UPDATE_VAR}=1 cargo test -p paynode-tests --test openapi`");
    if let Some(fresh) = fresh {
        hint.push_str(&format!(
            ", or copy the fresh document: `cp {} docs/openapi.json`",
            fresh.display()
        ));
    }
    hint.push_str(", then review and commit the diff");
    hint
}

#[test]
fn committed_document_matches_the_code() {
    let generated = file_text(&paynode::api::openapi::document());
    if std::env::var_os(UPDATE_VAR).is_some_and(|v| v == "1") {
        let path = committed_path();
        std::fs::create_dir_all(path.parent().expect("docs/")).expect("create docs/");
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        eprintln!("wrote {}", path.display());
        return;
    }
    if committed() != generated {
        let fresh = workspace_root().join("target/openapi.json");
        let written = std::fs::create_dir_all(fresh.parent().expect("target/"))
            .and_then(|()| std::fs::write(&fresh, &generated));
        let hint = match written {
            Ok(()) => regenerate_hint(Some(&fresh)),
            Err(_) => regenerate_hint(None),
        };
        panic!("docs/openapi.json is out of date with paynode::api::openapi::document(); {hint}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_node_serves_the_committed_document() {
    let node = TestNode::start(test_config().await).await;
    let response = node
        .http
        .get(format!("{}/api-docs/openapi.json", node.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type}"
    );
    let served = response.text().await.expect("body");
    assert!(
        served == paynode::api::openapi::document(),
        "the node serves a different document than paynode::api::openapi::document()"
    );
    if std::env::var_os(UPDATE_VAR).is_some_and(|v| v == "1") {
        // committed_document_matches_the_code is rewriting the file.
        return;
    }
    assert!(
        file_text(&served) == committed(),
        "the node serves a different document than docs/openapi.json; {}",
        regenerate_hint(None)
    );
}

fn operations(document: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                out.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    out
}

#[test]
fn document_keeps_the_api_conventions() {
    let document: Value =
        serde_json::from_str(&paynode::api::openapi::document()).expect("valid JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let bearer = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "bearer scheme: {bearer}");
    assert_eq!(bearer["scheme"], "bearer", "bearer scheme: {bearer}");
    assert!(
        document["components"]["schemas"]["Problem"].is_object(),
        "Problem schema missing"
    );

    let operations = operations(&document);
    assert!(operations.len() >= 8, "{} operations", operations.len());
    for (method, path, operation) in operations {
        let name = format!("{method} {path}");
        assert!(
            operation["operationId"].is_string(),
            "{name}: no operationId"
        );
        let security = operation["security"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if path.starts_with("/api/v1/webhooks/") {
            // A PSP proves itself by its signature, not a bearer token.
            assert_eq!(security, [json!({})], "{name}: webhooks take no token");
        } else {
            assert!(
                security.iter().any(|s| s.get("bearer").is_some()),
                "{name}: not secured by the bearer scheme"
            );
        }
        let responses = operation["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{name}: no success response"
        );
        assert!(responses.contains_key("401"), "{name}: 401 not documented");
        for (status, response) in responses {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let content = response["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{name} {status}: no content"));
            let types: Vec<&String> = content.keys().collect();
            assert_eq!(
                types,
                ["application/problem+json"],
                "{name} {status}: errors are problem+json only"
            );
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{name} {status}: errors use the Problem schema"
            );
        }
    }
}
