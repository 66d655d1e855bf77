//! `paynode demo`: posts sample multi-seller payments to a running node and
//! prints each one's status as read back through the API.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::api::auth::{mint, role};
use crate::config::Config;

pub async fn run(
    config: &Config,
    url: &str,
    payments: usize,
    wait_secs: u64,
) -> anyhow::Result<ExitCode> {
    let token = mint(
        &config.auth,
        "demo-shop",
        &[role::PAYMENT_WRITE.into(), role::FINANCE.into()],
        3600,
    )?;
    let client = reqwest::Client::new();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::new();
    for n in 0..payments {
        let body = json!({
            "buyerId": format!("buyer-{n}"),
            "orderId": format!("demo-{run_id}-{n}"),
            "totalAmount": { "quantity": 4_500 + 1_000 * n as i64, "currency": "EUR" },
            "paymentOrders": [
                { "sellerId": "seller-a", "amount": { "quantity": 2_500, "currency": "EUR" } },
                { "sellerId": "seller-b", "amount": { "quantity": 2_000 + 1_000 * n as i64, "currency": "EUR" } },
            ],
        });
        let response = client
            .post(format!("{url}/api/v1/payments"))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("demo-{run_id}-{n}"))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        anyhow::ensure!(
            status.as_u16() == 202,
            "payment {n} refused ({status}): {answer}"
        );
        ids.push(answer["paymentId"].as_str().unwrap_or_default().to_string());
    }
    println!(
        "posted {} payments; waiting for PSP outcomes and ledger postings",
        ids.len()
    );

    let progress = ProgressBar::new(ids.len() as u64);
    progress.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} payments settled {msg}",
    )?);
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let mut views: Vec<Value> = Vec::new();
    loop {
        views.clear();
        for id in &ids {
            let view: Value = client
                .get(format!("{url}/api/v1/payments/{id}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            views.push(view);
        }
        let settled = views.iter().filter(|v| v["status"] != "PENDING").count();
        progress.set_position(settled as u64);
        if settled == ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    progress.finish_and_clear();

    let mut missing = 0;
    for view in &views {
        println!(
            "payment {} {} total {} EUR-minor",
            view["paymentId"].as_str().unwrap_or("?"),
            view["status"],
            view["totalAmount"]["quantity"]
        );
        for order in view["paymentOrders"].as_array().into_iter().flatten() {
            let outcome = order["latestOutcome"]["kind"].as_str().unwrap_or("none");
            if outcome == "none" {
                missing += 1;
            }
            println!(
                "  order {} seller {:<9} {:>6} {:<16} psp={:<9} attempts={} ref={}",
                order["paymentOrderId"].as_str().unwrap_or("?"),
                order["sellerId"].as_str().unwrap_or("?"),
                order["amount"]["quantity"],
                order["status"].as_str().unwrap_or("?"),
                outcome,
                order["attempts"].as_array().map_or(0, Vec::len),
                order["pspReference"].as_str().unwrap_or("-"),
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    print_balances(&client, url, &token).await?;
    if let Err(error) = refund_one(&client, url, &token, &views, &run_id).await {
        println!("refund demo failed: {error:#}");
        return Ok(ExitCode::FAILURE);
    }
    if missing > 0 {
        println!("{missing} payment order(s) got no PSP outcome in {wait_secs} s");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn print_balances(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<()> {
    for seller in ["seller-a", "seller-b"] {
        let balances: Value = client
            .get(format!("{url}/api/v1/sellers/{seller}/balances"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        for account in balances["accounts"].as_array().into_iter().flatten() {
            println!(
                "ledger {:<28} balance {:>8} (from {})",
                account["account"].as_str().unwrap_or("?"),
                account["balanceMinor"],
                balances["source"]
            );
        }
    }
    Ok(())
}

/// seller-a's balance (minor units) on its merchant account, as the API
/// reports it.
async fn seller_balance(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<i64> {
    let balances: Value = client
        .get(format!("{url}/api/v1/sellers/seller-a/balances"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(balances["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| {
            a["account"]
                .as_str()
                .is_some_and(|c| c.starts_with("MERCHANT_ACCOUNT."))
        })
        .filter_map(|a| a["balanceMinor"].as_i64())
        .sum())
}

/// Refunds 1 000 of seller-a's first succeeded order and shows the
/// seller's balance before and after.
async fn refund_one(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    views: &[Value],
    run_id: &str,
) -> anyhow::Result<()> {
    let Some(order) = views
        .iter()
        .flat_map(|v| v["paymentOrders"].as_array().into_iter().flatten())
        .find(|o| o["sellerId"] == "seller-a" && o["status"] == "SUCCEEDED")
    else {
        println!("no succeeded order of seller-a to refund");
        return Ok(());
    };
    let order_id = order["paymentOrderId"].as_str().unwrap_or_default();
    let before = seller_balance(client, url, token).await?;
    let response = client
        .post(format!("{url}/api/v1/payment-orders/{order_id}/refunds"))
        .bearer_auth(token)
        .header("Idempotency-Key", format!("demo-refund-{run_id}"))
        .json(&json!({ "amount": { "quantity": 1_000, "currency": "EUR" }, "reason": "demo: one item returned" }))
        .send()
        .await?;
    let status = response.status();
    let refund: Value = response.json().await?;
    anyhow::ensure!(
        status.as_u16() == 202,
        "refund refused ({status}): {refund}"
    );
    let refund_id = refund["refundId"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut view = refund;
    while view["status"] == "REQUESTED" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        view = client
            .get(format!("{url}/api/v1/refunds/{refund_id}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
    }
    println!(
        "refund {refund_id} of order {order_id}: 1000 EUR-minor {} ref={}",
        view["status"].as_str().unwrap_or("?"),
        view["pspReference"].as_str().unwrap_or("-")
    );
    anyhow::ensure!(
        view["status"] == "SUCCEEDED",
        "refund ended {}",
        view["status"]
    );
    let mut after = seller_balance(client, url, token).await?;
    while after == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        after = seller_balance(client, url, token).await?;
    }
    println!(
        "seller-a merchant balance {before} -> {after} (refunded {})",
        before - after
    );
    Ok(())
}
