//! `paynode reconcile`: integrity checks over the ledger and the pipeline.

use std::process::ExitCode;

use crate::config::Config;
use crate::store;

pub use crate::store::reconcile::{checks, Check};

pub async fn run(config: &Config, outbox_age_secs: i64, json: bool) -> anyhow::Result<ExitCode> {
    let pool = store::connect(&config.database).await?;
    let checks = checks(&pool, outbox_age_secs).await?;
    let breached = checks.iter().filter(|c| c.breaches > 0).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            let mark = if check.breaches == 0 { "ok  " } else { "FAIL" };
            println!(
                "{mark} {:<44} {:>6}  {}",
                check.name, check.breaches, check.detail
            );
        }
        println!("{} checks, {breached} breached", checks.len());
    }
    Ok(if breached == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
