//! The `scripted` scenario: the config lists the outcome of each attempt,
//! so a test can walk the host through an exact sequence (a transient,
//! then a timeout, then success) without random draws.

use paynode_guest::Outcome;

use crate::scenarios::Kind;
use crate::simulate::invalid_config;

/// Entry `attempt - 1` of a comma list (the last entry repeats).
pub(crate) fn script_entry(key: &str, script: &str, attempt: u32) -> Result<Kind, Outcome> {
    let entries: Vec<&str> = script
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(invalid_config(format!("config `{key}` is empty")));
    }
    let idx = (attempt.max(1) - 1) as usize;
    let entry = entries[idx.min(entries.len() - 1)];
    Kind::parse(entry).ok_or_else(|| {
        invalid_config(format!(
            "config `{key}`: unknown entry {entry:?} (expected succeeded, declined, transient or unknown)"
        ))
    })
}
