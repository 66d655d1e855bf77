//! `paynode plugin ...`: test a component against fixtures, and manage the
//! registry (push, activate, rollback, list) directly in Postgres.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::components::harness::{self, FixtureFile};
use crate::components::registry::Registry;
use crate::components::{Runtime, Slot};
use crate::config::Config;
use crate::store::{self, plugins};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Run a component against fixture files (a file or a folder of *.json).
    Test {
        component: PathBuf,
        fixtures: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate and store a component version (it is not activated).
    Push {
        component: PathBuf,
        #[arg(long)]
        slot: String,
        /// Fixtures (a file or a folder of *.json) it must pass before it is
        /// stored, with a case for each export of the slot's world; stored
        /// with it and re-run by every activation. Required.
        #[arg(long)]
        fixtures: Option<PathBuf>,
        #[arg(long, default_value = "cli")]
        actor: String,
    },
    /// Activate a stored version on every node, once its stored fixtures
    /// pass again.
    Activate {
        #[arg(long)]
        slot: String,
        #[arg(long)]
        sha256: String,
        /// Guest configuration, repeatable: --set scenario=PEAK
        #[arg(long = "set", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        #[arg(long, default_value = "cli")]
        actor: String,
    },
    /// Re-activate the previous version of a slot.
    Rollback {
        #[arg(long)]
        slot: String,
        #[arg(long, default_value = "cli")]
        actor: String,
    },
    /// Run a stored posting-rules version as the shadow of the active one:
    /// on live traffic, its journals are diffed and counted
    /// (`component_shadow_total`), never applied.
    Shadow {
        #[arg(long, default_value = "posting-rules")]
        slot: String,
        /// The candidate; omit with --off.
        #[arg(long, required_unless_present = "off")]
        sha256: Option<String>,
        /// Stop shadowing.
        #[arg(long, conflicts_with = "sha256")]
        off: bool,
        /// Guest configuration for the candidate, repeatable: --set key=value
        #[arg(long = "set", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        #[arg(long, default_value = "cli")]
        actor: String,
    },
    /// List stored versions and the active one per slot.
    List,
    /// Scaffold a component crate with fixtures that pass out of the box.
    New {
        /// psp-adapter, retry-policy or posting-rules.
        slot: String,
        /// Crate name, e.g. psp-acme.
        name: String,
        /// Parent folder (default: psp-adapters/, plugins/ or ledger-rules/ by slot).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The scaffold templates are the `plugins/template-*` crates, which the
/// test command builds and runs against their fixtures: a scaffold starts green.
fn template(slot: Slot) -> [(&'static str, &'static str); 3] {
    match slot {
        Slot::PspAdapter => [
            (
                "Cargo.toml",
                include_str!("../../../plugins/template-psp-adapter/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../plugins/template-psp-adapter/src/lib.rs"),
            ),
            (
                "fixtures/cases.json",
                include_str!("../../../plugins/template-psp-adapter/fixtures/cases.json"),
            ),
        ],
        Slot::RetryPolicy => [
            (
                "Cargo.toml",
                include_str!("../../../plugins/template-retry-policy/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../plugins/template-retry-policy/src/lib.rs"),
            ),
            (
                "fixtures/cases.json",
                include_str!("../../../plugins/template-retry-policy/fixtures/cases.json"),
            ),
        ],
        Slot::PostingRules => [
            (
                "Cargo.toml",
                include_str!("../../../plugins/template-posting-rules/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../plugins/template-posting-rules/src/lib.rs"),
            ),
            (
                "fixtures/cases.json",
                include_str!("../../../plugins/template-posting-rules/fixtures/cases.json"),
            ),
        ],
    }
}

/// Writes a new component crate; returns its folder.
pub fn scaffold(slot: Slot, name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 48
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "name must be 1..=48 of [a-z0-9-]"
    );
    let dir = parent.join(name);
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    for (file, text) in template(slot) {
        let text = text
            .replace(&format!("template-{slot}"), name)
            .replace(&format!("Starting point for a new {slot} component (`paynode plugin new {slot} <name>` copies it)"), &format!("The {name} {slot} component"));
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("files have parents"))?;
        std::fs::write(&path, text)?;
    }
    Ok(dir)
}

pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

fn slot(text: &str) -> anyhow::Result<Slot> {
    Slot::parse(text)
        .ok_or_else(|| anyhow::anyhow!("slot must be psp-adapter, retry-policy or posting-rules"))
}

/// Refuses a sha the registry does not hold, or holds for another slot.
async fn ensure_stored(pool: &sqlx::PgPool, sha256: &str, slot: Slot) -> anyhow::Result<()> {
    let (stored_slot, _) = plugins::bytes(pool, sha256)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no stored component with sha256 {sha256}"))?;
    anyhow::ensure!(
        stored_slot == slot.as_str(),
        "{sha256} is a {stored_slot} component"
    );
    Ok(())
}

/// Fixture files: one file, or every `*.json` in a folder (sorted).
pub fn fixture_files(path: &Path) -> anyhow::Result<Vec<(PathBuf, FixtureFile)>> {
    let paths: Vec<PathBuf> = if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        found.sort();
        found
    } else {
        vec![path.to_path_buf()]
    };
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let file: FixtureFile =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            Ok((p, file))
        })
        .collect()
}

/// Runs fixtures against a component file; returns (all passed, rendered report).
pub async fn test_component(
    config: &Config,
    component: &Path,
    fixtures: &Path,
    json: bool,
) -> anyhow::Result<(bool, String)> {
    let bytes =
        std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let files = fixture_files(fixtures)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no fixture files in {}",
        fixtures.display()
    );
    let runtime = Runtime::new(None)?;
    let mut passed = true;
    let mut out = String::new();
    for (path, file) in files {
        let slot = slot(&file.slot)?;
        let loaded = runtime
            .load(slot, &bytes)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", component.display()))?;
        let slot_config = match slot {
            Slot::PspAdapter => &config.components.psp_adapter,
            Slot::RetryPolicy => &config.components.retry_policy,
            Slot::PostingRules => &config.components.posting_rules,
        };
        let env = crate::components::runtime::CallEnv::offline(slot_config, "harness");
        let report = harness::run(&runtime, &loaded, &file, &env).await;
        passed &= report.passed();
        if json {
            out.push_str(&serde_json::to_string_pretty(&report)?);
            out.push('\n');
        } else {
            out.push_str(&format!("{}\n{}", path.display(), report.render()));
        }
    }
    Ok((passed, out))
}

pub async fn run(config: &Config, command: PluginCommand) -> anyhow::Result<ExitCode> {
    if let PluginCommand::Test {
        component,
        fixtures,
        json,
    } = &command
    {
        let (passed, report) = test_component(config, component, fixtures, *json).await?;
        print!("{report}");
        return Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if let PluginCommand::New {
        slot: slot_name,
        name,
        dir,
    } = &command
    {
        let slot = slot(slot_name)?;
        let parent = dir.clone().unwrap_or_else(|| {
            PathBuf::from(match slot {
                Slot::PspAdapter => "psp-adapters",
                Slot::RetryPolicy => "plugins",
                Slot::PostingRules => "ledger-rules",
            })
        });
        let created = scaffold(slot, name, &parent)?;
        println!("created {}", created.display());
        println!("next: cargo xtask components {name}");
        println!(
            "      paynode plugin test target/components/{name}.wasm {}/fixtures",
            created.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let pool = store::connect(&config.database).await?;
    store::migrate(&pool).await?;
    match command {
        PluginCommand::Test { .. } | PluginCommand::New { .. } => unreachable!("handled above"),
        PluginCommand::Push {
            component,
            slot: slot_name,
            fixtures,
            actor,
        } => {
            let bytes = std::fs::read(&component)
                .with_context(|| format!("reading {}", component.display()))?;
            let registry = Registry::new(
                Runtime::new(None)?,
                pool,
                std::sync::Arc::new(config.clone()),
            );
            let fixtures = match &fixtures {
                Some(path) => fixture_files(path)?.into_iter().map(|(_, f)| f).collect(),
                None => Vec::new(),
            };
            let row = registry
                .push(slot(&slot_name)?, &bytes, &fixtures, &actor)
                .await?;
            println!(
                "stored {} {} ({}) sha256 {}",
                row.name, row.version, row.slot, row.sha256
            );
        }
        PluginCommand::Activate {
            slot: slot_name,
            sha256,
            config: pairs,
            actor,
        } => {
            let slot = slot(&slot_name)?;
            let registry = Registry::new(
                Runtime::new(None)?,
                pool,
                std::sync::Arc::new(config.clone()),
            );
            let map: std::collections::BTreeMap<String, String> = pairs.into_iter().collect();
            let activation = registry
                .activate(slot, &sha256, &serde_json::to_value(map)?, &actor)
                .await?;
            println!(
                "activated {} on {} (activation {})",
                activation.sha256, activation.slot, activation.id
            );
        }
        PluginCommand::Rollback {
            slot: slot_name,
            actor,
        } => {
            let slot = slot(&slot_name)?;
            let previous = plugins::previous(&pool, slot.as_str())
                .await?
                .ok_or_else(|| anyhow::anyhow!("no earlier version of {slot}"))?;
            let activation = plugins::activate(
                &pool,
                slot.as_str(),
                &previous.sha256,
                &previous.config,
                "rollback",
                &actor,
            )
            .await?;
            println!(
                "rolled {} back to {} (activation {})",
                activation.slot, activation.sha256, activation.id
            );
        }
        PluginCommand::Shadow {
            slot: slot_name,
            sha256,
            off,
            config: pairs,
            actor,
        } => {
            let slot = slot(&slot_name)?;
            anyhow::ensure!(
                slot == Slot::PostingRules,
                "only posting-rules can be shadowed: a shadow {slot} would act on the world"
            );
            let sha256 = if off { None } else { sha256 };
            if let Some(sha) = &sha256 {
                ensure_stored(&pool, sha, slot).await?;
            }
            let map: std::collections::BTreeMap<String, String> = pairs.into_iter().collect();
            plugins::set_shadow(
                &pool,
                slot.as_str(),
                sha256.as_deref(),
                &serde_json::to_value(map)?,
                &actor,
            )
            .await?;
            match sha256 {
                Some(sha) => println!("{sha} now shadows the active {slot}"),
                None => println!("{slot} shadow off"),
            }
        }
        PluginCommand::List => {
            let active = plugins::active(&pool).await?;
            for row in plugins::list(&pool).await? {
                let mark = if active
                    .iter()
                    .any(|a| a.sha256 == row.sha256 && a.slot == row.slot)
                {
                    "*"
                } else {
                    " "
                };
                println!(
                    "{mark} {:<14} {:<24} {:<8} {} {} {}",
                    row.slot,
                    row.name,
                    row.version,
                    &row.sha256[..16],
                    row.uploaded_by,
                    row.uploaded_at
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
