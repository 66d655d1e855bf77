//! Activation is gated, through the `paynode plugin` commands operators use:
//! `push` refuses a component without fixtures for every export of its
//! world, `activate` re-runs the stored fixtures (and refuses a version
//! stored without any), and with `plugins.require_approval` the activator
//! must be someone other than the uploader.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use paynode_tests::*;
use serde_json::Value;
use sqlx::PgPool;

fn paynode_binary() -> PathBuf {
    // target/debug/deps/plugin_gate-* → target/debug/paynode
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("paynode");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p paynode` first",
        bin.display()
    );
    bin
}

struct Cli {
    database_url: String,
    env: Vec<(String, String)>,
}

impl Cli {
    async fn new(env: &[(&str, &str)]) -> (Cli, PgPool) {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let database_url = fresh_database(&id).await;
        let pool = PgPool::connect(&database_url).await.unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (Cli { database_url, env }, pool)
    }

    fn run(&self, args: &[&str]) -> Output {
        let output = Command::new(paynode_binary())
            .arg("plugin")
            .args(args)
            .env("PAYNODE_DATABASE__URL", &self.database_url)
            .env("PAYNODE_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        eprintln!(
            "paynode plugin {}: {}\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stripe_fixtures() -> PathBuf {
    workspace_root().join("psp-adapters/stripe/fixtures")
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn push_without_fixtures_for_every_export_is_refused() {
    let (cli, pool) = Cli::new(&[]).await;
    let stripe = component_path("psp-stripe");
    let refused = cli.run(&["push", path(&stripe), "--slot", "psp-adapter"]);
    assert!(!refused.status.success(), "pushed without fixtures");
    assert!(
        stderr(&refused).contains("fixtures"),
        "{}",
        stderr(&refused)
    );

    // Fixtures for `charge` only: `status` is an export of the world too.
    let text = std::fs::read_to_string(stripe_fixtures().join("payment-intents.json")).unwrap();
    let mut charge_only: Value = serde_json::from_str(&text).unwrap();
    charge_only["cases"]
        .as_array_mut()
        .unwrap()
        .retain(|case| case["call"] == "charge");
    let file = std::env::temp_dir().join(format!("charge-only-{}.json", std::process::id()));
    std::fs::write(&file, charge_only.to_string()).unwrap();
    let refused = cli.run(&[
        "push",
        path(&stripe),
        "--slot",
        "psp-adapter",
        "--fixtures",
        path(&file),
    ]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        !refused.status.success(),
        "pushed with charge fixtures only"
    );
    assert!(stderr(&refused).contains("status"), "{}", stderr(&refused));
    assert_eq!(count(&pool, "SELECT count(*) FROM plugins").await, 0);

    let stored = cli.run(&[
        "push",
        path(&stripe),
        "--slot",
        "psp-adapter",
        "--fixtures",
        path(&stripe_fixtures()),
    ]);
    assert!(stored.status.success(), "{}", stderr(&stored));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM admin_audit WHERE action = 'push'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn activation_reruns_the_stored_fixtures() {
    let (cli, pool) = Cli::new(&[]).await;
    let stripe = component_path("psp-stripe");
    let stripe_sha = sha256_file(&stripe);
    let stored = cli.run(&[
        "push",
        path(&stripe),
        "--slot",
        "psp-adapter",
        "--fixtures",
        path(&stripe_fixtures()),
    ]);
    assert!(stored.status.success(), "{}", stderr(&stored));
    let activated = cli.run(&["activate", "--slot", "psp-adapter", "--sha256", &stripe_sha]);
    assert!(activated.status.success(), "{}", stderr(&activated));

    // A version stored without fixtures (by the node's bootstrap, or before
    // fixtures were stored) cannot be activated by hand.
    let simulator = std::fs::read(component_path("psp-simulator")).unwrap();
    let simulator_sha = sha256_file(&component_path("psp-simulator"));
    sqlx::query(
        "INSERT INTO plugins (sha256, slot, name, version, bytes, uploaded_by)
         VALUES ($1, 'psp-adapter', 'psp-simulator', '0.1.0', $2, 'bootstrap')",
    )
    .bind(&simulator_sha)
    .bind(&simulator)
    .execute(&pool)
    .await
    .unwrap();
    let refused = cli.run(&[
        "activate",
        "--slot",
        "psp-adapter",
        "--sha256",
        &simulator_sha,
    ]);
    assert!(!refused.status.success(), "activated without fixtures");
    assert!(
        stderr(&refused).contains("fixtures"),
        "{}",
        stderr(&refused)
    );

    // Stored fixtures that fail now (here: changed in the database) refuse
    // the activation, and nothing is activated.
    sqlx::query(
        "UPDATE plugins SET fixtures = jsonb_set(fixtures, '{0,cases,0,expect}', '{\"succeeded\": \"pi_not_this\"}')
         WHERE sha256 = $1",
    )
    .bind(&stripe_sha)
    .execute(&pool)
    .await
    .unwrap();
    let refused = cli.run(&["activate", "--slot", "psp-adapter", "--sha256", &stripe_sha]);
    assert!(!refused.status.success(), "activated with failing fixtures");
    assert!(
        stderr(&refused).contains("fixtures failed"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM plugin_activations").await,
        1,
        "only the first activation happened"
    );
}

#[tokio::test]
async fn four_eyes_the_uploader_cannot_activate() {
    let (cli, pool) = Cli::new(&[("PAYNODE_PLUGINS__REQUIRE_APPROVAL", "true")]).await;
    let stripe = component_path("psp-stripe");
    let stripe_sha = sha256_file(&stripe);
    let stored = cli.run(&[
        "push",
        path(&stripe),
        "--slot",
        "psp-adapter",
        "--fixtures",
        path(&stripe_fixtures()),
        "--actor",
        "alice",
    ]);
    assert!(stored.status.success(), "{}", stderr(&stored));
    let activate = |actor: &str| {
        cli.run(&[
            "activate",
            "--slot",
            "psp-adapter",
            "--sha256",
            &stripe_sha,
            "--actor",
            actor,
        ])
    };
    let refused = activate("alice");
    assert!(!refused.status.success(), "the uploader activated");
    assert!(
        stderr(&refused).contains("approval"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM plugin_activations").await,
        0
    );
    let approved = activate("bob");
    assert!(approved.status.success(), "{}", stderr(&approved));
    let activated_by: String = sqlx::query_scalar("SELECT activated_by FROM plugin_activations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(activated_by, "bob");
}
