//! `paynode plugin ...`: test a component against fixtures, and manage the
//! registry (push, activate, rollback, list) directly in Postgres.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::components::egress_policy::{EgressPolicy, SecretBinding};
use crate::components::harness::{self, FixtureFile};
use crate::components::registry::Registry;
use crate::components::{Runtime, Slot};
use crate::config::Config;
use crate::store::{self, plugins};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Run a component against fixture files (a file or a folder of *.json).
    ///
    /// Adapters run under an egress policy as on the node: the flags or
    /// --policy, else a `plugin.toml` beside the fixtures folder. Secret
    /// placeholders become `fake-<name>`.
    Test {
        component: PathBuf,
        fixtures: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: PolicyArgs,
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
        /// The adapter's egress policy, approved with this activation.
        /// Without one, the node config's `allow_hosts` apply.
        #[command(flatten)]
        policy: PolicyArgs,
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
    /// Outside the paynode repo it is a crate of its own (WIT and guest SDK
    /// vendored), built with `paynode plugin build`.
    New {
        /// psp-adapter, retry-policy or posting-rules.
        slot: String,
        /// Crate name, e.g. psp-acme.
        name: String,
        /// Parent folder (default: psp-adapters/, plugins/ or ledger-rules/ by slot).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a component crate (one made by `plugin new`, anywhere) into a
    /// component, with the toolchain `cargo xtask components` picks.
    Build {
        /// The crate's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component (default: DIR/target/NAME.wasm).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// An egress policy on the command line.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct PolicyArgs {
    /// An entry requests may reach, repeatable: --allow https://api.x.com:443
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Where a secret may be injected, repeatable:
    /// --secret psp_api_key=https://api.x.com:443:Authorization
    #[arg(long = "secret", value_parser = EgressPolicy::parse_secret_flag)]
    pub secret: Vec<SecretBinding>,
    /// A secret the adapter may use as an HMAC key (`crypto.hmac-sha256`,
    /// e.g. a webhook signing secret), repeatable: --signing stripe_webhook_secret
    #[arg(long = "signing")]
    pub signing: Vec<String>,
    /// A TOML policy file: `allow = [...]`, `signing = [...]` and
    /// `[[secrets]]` tables of `name`, `entry`, `headers` (or the same
    /// under `[egress]`).
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

impl PolicyArgs {
    /// None when no flag was given.
    pub fn resolve(&self) -> anyhow::Result<Option<EgressPolicy>> {
        let flags = EgressPolicy {
            allow: self.allow.clone(),
            secrets: self.secret.clone(),
            signing: self.signing.clone(),
        };
        EgressPolicy::from_parts(self.policy.as_deref(), &flags)
            .map_err(|e| anyhow::anyhow!("egress policy: {e}"))
    }

    /// The flags, else `plugin.toml` in the fixtures' folder or its parent
    /// (the crate).
    fn resolve_for_test(&self, fixtures: &Path) -> anyhow::Result<Option<EgressPolicy>> {
        if let Some(policy) = self.resolve()? {
            return Ok(Some(policy));
        }
        let dir = if fixtures.is_dir() {
            fixtures
        } else {
            fixtures.parent().unwrap_or(Path::new("."))
        };
        let found = [dir.join("plugin.toml"), dir.join("../plugin.toml")]
            .into_iter()
            .find(|p| p.is_file());
        let Some(path) = found else {
            return Ok(None);
        };
        let policy = EgressPolicy::from_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        policy
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Some(policy))
    }
}

/// How `activate` and `list` show an activation's egress policy.
fn egress_line(stored: Option<&serde_json::Value>) -> String {
    match stored.map(|v| serde_json::from_value::<EgressPolicy>(v.clone())) {
        None => "none approved (node config allow_hosts apply)".into(),
        Some(Ok(policy)) => policy.summary(),
        Some(Err(error)) => format!("unreadable ({error})"),
    }
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
            let value: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            harness::check_schema(&value).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let file: FixtureFile = serde_json::from_value(value)
                .with_context(|| format!("parsing {}", p.display()))?;
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
    policy: Option<&EgressPolicy>,
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
        let env = harness::env(slot_config, policy).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        policy,
    } = &command
    {
        let policy = policy.resolve_for_test(fixtures)?;
        if let Some(policy) = &policy {
            eprintln!("egress policy: {}", policy.summary());
        }
        let (passed, report) =
            test_component(config, component, fixtures, *json, policy.as_ref()).await?;
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
        let (created, alone) = super::plugin_scaffold::scaffold(slot, name, &parent)?;
        println!("created {}", created.display());
        if alone {
            println!("next: paynode plugin build {}", created.display());
            println!(
                "      paynode plugin test {0}/target/{name}.wasm {0}/fixtures",
                created.display()
            );
        } else {
            println!("next: cargo xtask components {name}");
            println!(
                "      paynode plugin test target/components/{name}.wasm {}/fixtures",
                created.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let PluginCommand::Build { dir, out } = &command {
        let built = super::plugin_build::build(dir, out.as_deref())?;
        println!("{}", built.display());
        return Ok(ExitCode::SUCCESS);
    }
    let pool = store::connect(&config.database).await?;
    store::migrate(&pool).await?;
    match command {
        PluginCommand::Test { .. } | PluginCommand::New { .. } | PluginCommand::Build { .. } => {
            unreachable!("handled above")
        }
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
            policy,
            actor,
        } => {
            let slot = slot(&slot_name)?;
            let policy = policy.resolve()?;
            let registry = Registry::new(
                Runtime::new(None)?,
                pool,
                std::sync::Arc::new(config.clone()),
            );
            let map: std::collections::BTreeMap<String, String> = pairs.into_iter().collect();
            let activation = registry
                .activate(
                    slot,
                    &sha256,
                    &serde_json::to_value(map)?,
                    policy.as_ref(),
                    &actor,
                )
                .await?;
            println!(
                "activated {} on {} (activation {})",
                activation.sha256, activation.slot, activation.id
            );
            println!("egress: {}", egress_line(activation.egress.as_ref()));
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
                previous.egress.as_ref(),
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
            for activation in active.iter().filter(|a| a.slot == "psp-adapter") {
                println!(
                    "psp-adapter activation {} egress: {}",
                    activation.id,
                    egress_line(activation.egress.as_ref())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
