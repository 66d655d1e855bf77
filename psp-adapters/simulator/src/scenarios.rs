//! The named scenarios: each random one is a profile (timeout rate,
//! latency buckets, success / transient / decline split) that [`plan`]
//! turns into one call's draws; `scripted` has no profile (see
//! [`crate::scripted`]).

use paynode_guest::{outcome, Outcome};

use crate::draws::Draws;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Normal,
    Peak,
    Degraded,
    BestPspEver,
    Scripted,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "normal" => Some(Scenario::Normal),
            "peak" => Some(Scenario::Peak),
            "degraded" => Some(Scenario::Degraded),
            "best_psp_ever" => Some(Scenario::BestPspEver),
            "scripted" => Some(Scenario::Scripted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "NORMAL",
            Scenario::Peak => "PEAK",
            Scenario::Degraded => "DEGRADED",
            Scenario::BestPspEver => "BEST_PSP_EVER",
            Scenario::Scripted => "scripted",
        }
    }

    /// Profile of a random scenario; `None` for `Scripted`.
    pub fn profile(self) -> Option<Profile> {
        match self {
            Scenario::Normal => Some(Profile {
                timeout_pct: 0,
                buckets: &[(100, 50, 150)],
                success_pct: 100,
                transient_pct: 0,
            }),
            Scenario::Peak => Some(Profile {
                timeout_pct: 25,
                buckets: &[(30, 250, 500), (50, 501, 1500), (20, 1501, 2500)],
                success_pct: 50,
                transient_pct: 45,
            }),
            Scenario::Degraded => Some(Profile {
                timeout_pct: 30,
                buckets: &[(20, 2000, 2200), (20, 2201, 2600), (60, 2601, 2990)],
                success_pct: 50,
                transient_pct: 40,
            }),
            Scenario::BestPspEver => Some(Profile {
                timeout_pct: 0,
                buckets: &[(100, 1, 2)],
                success_pct: 100,
                transient_pct: 0,
            }),
            Scenario::Scripted => None,
        }
    }
}

/// A random scenario: timeout probability, latency buckets (probability in
/// percent, inclusive range in ms; probabilities add up to 100) and the
/// success / transient split in percent (declines are the rest).
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub timeout_pct: u32,
    pub buckets: &'static [(u32, u32, u32)],
    pub success_pct: u32,
    pub transient_pct: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Succeeded,
    Declined,
    Transient,
    Unknown,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "succeeded" => Some(Kind::Succeeded),
            "declined" => Some(Kind::Declined),
            "transient" => Some(Kind::Transient),
            "unknown" => Some(Kind::Unknown),
            _ => None,
        }
    }
}

/// What a random scenario draws for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub timed_out: bool,
    pub latency_ms: u32,
    /// What the PSP really did, ignoring the timeout.
    pub real: Kind,
}

pub fn plan(profile: &Profile, hash: u64) -> Plan {
    let mut d = Draws::new(hash);
    let timed_out = d.percent() < profile.timeout_pct;
    let bucket_draw = d.percent();
    let within = d.next_u64();
    let outcome_draw = d.percent();

    let mut acc = 0;
    let mut bucket = profile.buckets[profile.buckets.len() - 1];
    for b in profile.buckets {
        acc += b.0;
        if bucket_draw < acc {
            bucket = *b;
            break;
        }
    }
    let (_, lo, hi) = bucket;
    let span = u64::from(hi - lo) + 1;
    let latency_ms = lo + (within % span) as u32;

    let real = if outcome_draw < profile.success_pct {
        Kind::Succeeded
    } else if outcome_draw < profile.success_pct + profile.transient_pct {
        Kind::Transient
    } else {
        Kind::Declined
    };
    Plan {
        timed_out,
        latency_ms,
        real,
    }
}

pub fn outcome_of(kind: Kind, hash: u64) -> Outcome {
    match kind {
        Kind::Succeeded => outcome::succeeded(format!("sim_{hash:016x}")),
        Kind::Declined => {
            outcome::declined("card_declined", "simulated decline: the card was declined")
        }
        Kind::Transient => outcome::transient(
            "processing_error",
            "simulated transient PSP processing error",
        ),
        Kind::Unknown => outcome::unknown("simulated PSP timeout"),
    }
}
