//! The node's periodic reconciliation is incremental: each round checks the
//! rows stamped since the last one and the balances against checkpointed
//! sums, keeps a breach open until it clears, and agrees with the full
//! `paynode reconcile` on what is wrong.

use paynode::store::{self, reconcile};
use paynode_tests::fresh_database;
use sqlx::PgPool;
use uuid::Uuid;

/// A journal of one debit and one credit, applied to balances or not.
async fn journal(pool: &PgPool, id: &str, debit: i64, credit: i64) {
    sqlx::query(
        "INSERT INTO journal_entries (journal_id, payment_order_id, seller_id, kind, currency,
                                      source_event_id, rule_sha256, trace_id)
         VALUES ($1, $2, 's1', 'capture', 'EUR', $3, 'sha', 't')",
    )
    .bind(id)
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .execute(pool)
    .await
    .unwrap();
    for (account, side, amount) in [("A", "debit", debit), ("B", "credit", credit)] {
        sqlx::query(
            "INSERT INTO postings (journal_id, account_code, side, amount_minor, currency)
             VALUES ($1, $2, $3, $4, 'EUR')",
        )
        .bind(id)
        .bind(account)
        .bind(side)
        .bind(amount)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn apply(pool: &PgPool, id: &str, debit: i64, credit: i64) {
    sqlx::query("INSERT INTO applied_journals (journal_id) VALUES ($1)")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    for (account, d, c) in [("A", debit, 0), ("B", 0, credit)] {
        sqlx::query(
            "INSERT INTO account_balances (account_code, currency, debit_minor, credit_minor)
             VALUES ($1, 'EUR', $2, $3) ON CONFLICT (account_code) DO UPDATE
             SET debit_minor = account_balances.debit_minor + $2,
                 credit_minor = account_balances.credit_minor + $3",
        )
        .bind(account)
        .bind(d)
        .bind(c)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// (incremental round, full check) breaches of one check.
async fn breaches(pool: &PgPool, name: &str) -> (i64, i64) {
    let find = |checks: Vec<reconcile::Check>| {
        checks
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
            .breaches
    };
    // Margin 0: a round's checkpoint reaches every journal applied before it.
    let round = find(reconcile::incremental(pool, 300, 0).await.unwrap());
    let full = find(reconcile::checks(pool, 300).await.unwrap());
    (round, full)
}

#[tokio::test]
async fn incremental_rounds_find_keep_and_clear_breaches_as_the_full_check_does() {
    let url = fresh_database(&format!(
        "rec_{}",
        &Uuid::new_v4().simple().to_string()[..10]
    ))
    .await;
    let pool = PgPool::connect(&url).await.unwrap();
    store::migrate(&pool).await.unwrap();

    journal(&pool, "j1", 100, 100).await;
    apply(&pool, "j1", 100, 100).await;
    assert_eq!(breaches(&pool, "balances equal postings").await, (0, 0));
    assert_eq!(breaches(&pool, "journals balance").await, (0, 0));

    // A balance changed behind the ledger's back, after j1 went into the
    // checkpointed sums: the round sees it from the checkpoint.
    sqlx::query(
        "UPDATE account_balances SET debit_minor = debit_minor + 1 WHERE account_code = 'A'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(breaches(&pool, "balances equal postings").await, (1, 1));
    sqlx::query(
        "UPDATE account_balances SET debit_minor = debit_minor - 1 WHERE account_code = 'A'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(breaches(&pool, "balances equal postings").await, (0, 0));

    // An unbalanced journal in the window is found ...
    journal(&pool, "j2", 50, 40).await;
    assert_eq!(breaches(&pool, "journals balance").await, (1, 1));
    // ... stays open after it left every later window ...
    sqlx::query(
        "UPDATE journal_entries SET created_at = now() - interval '2 days' WHERE journal_id = 'j2'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(breaches(&pool, "journals balance").await, (1, 1));
    // ... and clears once the data is right.
    sqlx::query(
        "UPDATE postings SET amount_minor = 50 WHERE journal_id = 'j2' AND account_code = 'B'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(breaches(&pool, "journals balance").await, (0, 0));

    // The round reads only its window: a journal older than the last
    // round's watermark, unbalanced, is not its business (the full check
    // and the open-breach list are). This is what keeps a round cheap.
    journal(&pool, "j3", 70, 60).await;
    sqlx::query(
        "UPDATE journal_entries SET created_at = now() - interval '2 days' WHERE journal_id = 'j3'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(breaches(&pool, "journals balance").await, (0, 1));
}
