//! The three component slots and their WIT worlds.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Slot {
    PspAdapter,
    RetryPolicy,
    PostingRules,
}

impl Slot {
    pub const ALL: [Slot; 3] = [Slot::PspAdapter, Slot::RetryPolicy, Slot::PostingRules];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::PspAdapter => "psp-adapter",
            Slot::RetryPolicy => "retry-policy",
            Slot::PostingRules => "posting-rules",
        }
    }

    pub fn parse(text: &str) -> Option<Slot> {
        Slot::ALL.into_iter().find(|slot| slot.as_str() == text)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
