//! `plugin test` runs an adapter the way the node will: under an egress
//! policy (flags, a file, or the crate's `plugin.toml`), with fake secret
//! values. A fixture whose request the policy refuses fails, with the
//! node's error; so does one whose secret name is misspelled.

use paynode::cli::plugin::test_component;
use paynode::components::egress_policy::{EgressPolicy, SecretBinding};
use paynode_tests::*;

const TEMPLATE: &str = "plugins/template-psp-adapter";

fn policy(allow: &str, secret: &str) -> EgressPolicy {
    EgressPolicy {
        allow: vec![allow.into()],
        secrets: vec![SecretBinding {
            name: secret.into(),
            entry: allow.into(),
            headers: vec!["Authorization".into()],
        }],
        signing: vec![],
    }
}

async fn run(policy: Option<&EgressPolicy>) -> (bool, String) {
    let root = workspace_root();
    test_component(
        &paynode::config::Config::default(),
        &component_path("template-psp-adapter"),
        &root.join(TEMPLATE).join("fixtures"),
        false,
        policy,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_test_refuses_what_the_node_would_refuse() {
    // The crate's own plugin.toml: the fixtures pass, and they assert the
    // fake key lands in Authorization.
    let own =
        EgressPolicy::from_file(&workspace_root().join(TEMPLATE).join("plugin.toml")).unwrap();
    let (passed, report) = run(Some(&own)).await;
    assert!(passed, "{report}");

    // A policy for another host: the request is refused, with the error
    // the node gives.
    let elsewhere = policy("https://api.other.example:443", "psp_api_key");
    let (passed, report) = run(Some(&elsewhere)).await;
    assert!(!passed, "{report}");
    assert!(
        report.contains("the node would refuse this request: https://api.psp.example:443 is not in this adapter's egress policy"),
        "{report}"
    );

    // The right host, but the secret bound under a misspelled name.
    let misspelled = policy("https://api.psp.example:443", "psp_api_kye");
    let (passed, report) = run(Some(&misspelled)).await;
    assert!(!passed, "{report}");
    assert!(
        report
            .contains("unknown secret psp_api_key: the egress policy binds no secret of that name"),
        "{report}"
    );

    // The secret allowed in another header only: refused as the node would.
    let mut wrong_header = policy("https://api.psp.example:443", "psp_api_key");
    wrong_header.secrets[0].headers = vec!["X-Api-Key".into()];
    let (passed, report) = run(Some(&wrong_header)).await;
    assert!(!passed, "{report}");
    assert!(
        report.contains("secret psp_api_key is not bound to header authorization"),
        "{report}"
    );
}
