//! `cargo xtask components [NAME...]`: build every guest crate of the
//! workspace for wasm32, turn each core module into a component and write it
//! to `<workspace>/target/components/<package>.wasm` (or
//! `$PAYNODE_COMPONENTS_DIR`), with a `manifest.json` beside it.
//!
//! Guest crates are the workspace members whose Cargo.toml carries
//! `[package.metadata.paynode] slot = "psp-adapter" | "retry-policy" |
//! "posting-rules"`.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use guest_build::{cargo_bin, Package, Toolchain};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const SLOTS: [&str; 3] = ["psp-adapter", "retry-policy", "posting-rules"];

#[derive(Parser)]
#[command(name = "xtask", about = "paynode developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build guest crates into WebAssembly components.
    Components {
        /// Only these packages (default: every guest crate).
        names: Vec<String>,
        /// Print the output directory and exit.
        #[arg(long)]
        print_dir: bool,
        /// After building, decode each component and check its world.
        #[arg(long)]
        verify: bool,
    },
}

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Cmd::Components {
            names,
            print_dir,
            verify,
        } => {
            let ws = Workspace::load()?;
            let out_dir = components_dir(&ws.root);
            if print_dir {
                println!("{}", out_dir.display());
                return Ok(());
            }
            let selected = ws.select(&names)?;
            build_components(&ws, &selected, &out_dir)?;
            write_manifest(&ws, &out_dir)?;
            if verify {
                verify_components(&ws.root, &selected, &out_dir)?;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Workspace discovery

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct MetaPackage {
    name: String,
    version: String,
    id: String,
    manifest_path: PathBuf,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Clone, Debug)]
struct Guest {
    name: String,
    version: String,
    id: String,
    slot: String,
    dir: PathBuf,
}

struct Workspace {
    root: PathBuf,
    guests: Vec<Guest>,
}

impl Workspace {
    fn load() -> Result<Self> {
        // `cargo run` sets CARGO_MANIFEST_DIR to plugins/xtask at run time;
        // fall back to where this crate was compiled.
        let xtask_dir = env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let out = Command::new(cargo_bin())
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .arg("--manifest-path")
            .arg(xtask_dir.join("Cargo.toml"))
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!("cargo metadata failed ({})", out.status);
        }
        let meta: Metadata =
            serde_json::from_slice(&out.stdout).context("parsing cargo metadata output")?;
        let mut guests = Vec::new();
        for p in meta.packages {
            let slot = p
                .metadata
                .as_ref()
                .and_then(|m| m.get("paynode"))
                .and_then(|m| m.get("slot"))
                .and_then(|s| s.as_str());
            let Some(slot) = slot else { continue };
            if !SLOTS.contains(&slot) {
                bail!(
                    "package {} has unknown [package.metadata.paynode] slot {slot:?} (expected one of {SLOTS:?})",
                    p.name
                );
            }
            let dir = p
                .manifest_path
                .parent()
                .ok_or_else(|| anyhow!("bad manifest path for {}", p.name))?
                .to_path_buf();
            guests.push(Guest {
                name: p.name,
                version: p.version,
                id: p.id,
                slot: slot.to_string(),
                dir,
            });
        }
        guests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Workspace {
            root: meta.workspace_root,
            guests,
        })
    }

    fn select(&self, names: &[String]) -> Result<Vec<Guest>> {
        if names.is_empty() {
            if self.guests.is_empty() {
                bail!("no guest crates found (none has [package.metadata.paynode] slot)");
            }
            return Ok(self.guests.clone());
        }
        let mut out = Vec::new();
        for n in names {
            match self.guests.iter().find(|g| &g.name == n) {
                Some(g) => {
                    if !out.iter().any(|o: &Guest| o.name == g.name) {
                        out.push(g.clone());
                    }
                }
                None => {
                    let known: Vec<&str> = self.guests.iter().map(|g| g.name.as_str()).collect();
                    bail!("unknown guest crate {n:?}; known: {}", known.join(", "));
                }
            }
        }
        Ok(out)
    }
}

fn components_dir(root: &Path) -> PathBuf {
    match env::var_os("PAYNODE_COMPONENTS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => root.join("target").join("components"),
    }
}

fn guest_target_dir(root: &Path) -> PathBuf {
    match env::var_os("PAYNODE_GUEST_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => root.join("target").join("wasm-guests"),
    }
}

// ---------------------------------------------------------------------------
// Build + componentize (shared with `paynode plugin build`: guest-build)

fn build_core_modules(
    ws: &Workspace,
    guests: &[Guest],
    tc: &Toolchain,
) -> Result<BTreeMap<String, PathBuf>> {
    let packages: Vec<Package> = guests
        .iter()
        .map(|g| Package {
            name: g.name.clone(),
            id: g.id.clone(),
        })
        .collect();
    guest_build::build_core_modules(&ws.root, &guest_target_dir(&ws.root), &packages, tc)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn build_components(ws: &Workspace, guests: &[Guest], out_dir: &Path) -> Result<()> {
    let tc = Toolchain::detect()?;
    println!("toolchain: {}", tc.describe());
    println!("guest target dir: {}", guest_target_dir(&ws.root).display());
    println!("components dir: {}", out_dir.display());
    let started = Instant::now();
    let artifacts = build_core_modules(ws, guests, &tc)?;
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let mut failures = Vec::new();
    for g in guests {
        let core_path = &artifacts[&g.name];
        match componentize(g, core_path, out_dir) {
            Ok((size, sha, built)) => println!(
                "{:<26} {:<14} {:>9} bytes  sha256:{}  {}",
                g.name,
                g.slot,
                size,
                sha,
                if built { "built" } else { "up to date" }
            ),
            Err(e) => {
                eprintln!("{}: {e:#}", g.name);
                failures.push(g.name.clone());
            }
        }
    }
    println!(
        "{} component(s) in {:.1}s",
        guests.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("componentizing failed for: {}", failures.join(", "));
    }
    Ok(())
}

/// Returns (size, sha256 of the component, whether it was (re)encoded).
fn componentize(g: &Guest, core_path: &Path, out_dir: &Path) -> Result<(u64, String, bool)> {
    let core = fs::read(core_path).with_context(|| format!("reading {}", core_path.display()))?;
    let core_sha = sha256_hex(&core);
    let wasm_path = out_dir.join(format!("{}.wasm", g.name));
    let sha_path = out_dir.join(format!("{}.core.sha256", g.name));
    let previous = fs::read_to_string(&sha_path).unwrap_or_default();
    if previous.trim() == core_sha {
        if let Ok(bytes) = fs::read(&wasm_path) {
            return Ok((bytes.len() as u64, sha256_hex(&bytes), false));
        }
    }
    let component = guest_build::componentize(&core)
        .with_context(|| format!("componentizing {} ({})", g.name, core_path.display()))?;
    write_atomic(&wasm_path, &component)?;
    write_atomic(&sha_path, format!("{core_sha}\n").as_bytes())?;
    Ok((component.len() as u64, sha256_hex(&component), true))
}

// ---------------------------------------------------------------------------
// Manifest

#[derive(Serialize)]
struct ManifestEntry {
    name: String,
    slot: String,
    version: String,
    sha256: String,
    path: PathBuf,
    fixtures: Option<PathBuf>,
}

/// Lists every guest crate whose component exists in `out_dir`, so building
/// a subset does not drop the others from the manifest.
fn write_manifest(ws: &Workspace, out_dir: &Path) -> Result<()> {
    let mut entries = Vec::new();
    for g in &ws.guests {
        let path = out_dir.join(format!("{}.wasm", g.name));
        let Ok(bytes) = fs::read(&path) else { continue };
        let path = fs::canonicalize(&path).unwrap_or(path);
        let fixtures = g.dir.join("fixtures");
        entries.push(ManifestEntry {
            name: g.name.clone(),
            slot: g.slot.clone(),
            version: g.version.clone(),
            sha256: sha256_hex(&bytes),
            path,
            fixtures: fixtures.is_dir().then_some(fixtures),
        });
    }
    let json = serde_json::to_string_pretty(&entries)?;
    write_atomic(
        &out_dir.join("manifest.json"),
        format!("{json}\n").as_bytes(),
    )
}

// ---------------------------------------------------------------------------
// Verify

/// The exports a slot's world requires and the imports it allows. A
/// psp-adapter exporting `refund` is held to psp-adapter 2.0.0, any other
/// to the frozen 1.0.0.
fn contract(slot: &str, exports: &[String]) -> (&'static [&'static str], &'static [&'static str]) {
    match slot {
        "psp-adapter" if exports.iter().any(|e| e == "refund") => (
            &[
                "info",
                "charge",
                "status",
                "refund",
                "refund-status",
                "parse-notification",
            ],
            &[
                "paynode:psp-adapter/types@2.0.0",
                "paynode:psp-adapter/refunds@2.0.0",
                "paynode:psp-adapter/notifications@2.0.0",
                "paynode:psp-adapter/http@2.0.0",
                "paynode:psp-adapter/log@2.0.0",
                "paynode:psp-adapter/crypto@2.0.0",
            ],
        ),
        "psp-adapter" => (
            &["info", "charge", "status"],
            &[
                "paynode:psp-adapter/types@1.0.0",
                "paynode:psp-adapter/http@1.0.0",
                "paynode:psp-adapter/log@1.0.0",
            ],
        ),
        "retry-policy" => (&["info", "decide"], &["paynode:retry-policy/types@1.0.0"]),
        "posting-rules" if exports.iter().any(|e| e == "post-refund") => (
            &["info", "post", "post-refund"],
            &[
                "paynode:posting-rules/types@2.0.0",
                "paynode:posting-rules/refunds@2.0.0",
            ],
        ),
        "posting-rules" => (&["info", "post"], &["paynode:posting-rules/types@1.0.0"]),
        _ => (&[], &[]),
    }
}

fn world_key_name(resolve: &wit_parser::Resolve, key: &wit_parser::WorldKey) -> String {
    match key {
        wit_parser::WorldKey::Name(n) => n.clone(),
        wit_parser::WorldKey::Interface(id) => resolve
            .id_of(*id)
            .unwrap_or_else(|| format!("<anonymous interface {id:?}>")),
    }
}

/// Decodes each component's WIT world and checks it against its slot's
/// contract. Reference components must match exactly; test components
/// (under tests/components) may break the contract on purpose, which is
/// only reported.
fn verify_components(root: &Path, guests: &[Guest], out_dir: &Path) -> Result<()> {
    let tests_dir = root.join("tests");
    let mut bad = Vec::new();
    for g in guests {
        let path = out_dir.join(format!("{}.wasm", g.name));
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let decoded = wit_component::decode(&bytes)
            .with_context(|| format!("decoding {}", path.display()))?;
        let resolve = decoded.resolve();
        let world = &resolve.worlds[decoded.package_world_id()?];
        // Type items (from the world's `use`) are not imports of anything.
        let imports: Vec<String> = world
            .imports
            .iter()
            .filter(|(_, item)| !matches!(item, wit_parser::WorldItem::Type(_)))
            .map(|(k, _)| world_key_name(resolve, k))
            .collect();
        let exports: Vec<String> = world
            .exports
            .keys()
            .map(|k| world_key_name(resolve, k))
            .collect();
        let (want_exports, allowed_imports) = contract(&g.slot, &exports);
        let missing: Vec<&str> = want_exports
            .iter()
            .copied()
            .filter(|e| !exports.iter().any(|x| x == e))
            .collect();
        let foreign: Vec<&String> = imports
            .iter()
            .filter(|i| !allowed_imports.contains(&i.as_str()))
            .collect();
        let is_test = g.dir.starts_with(&tests_dir);
        let ok = missing.is_empty() && foreign.is_empty();
        println!(
            "{:<26} exports [{}] imports [{}]{}",
            g.name,
            exports.join(", "),
            imports.join(", "),
            match (ok, is_test) {
                (true, _) => String::new(),
                (false, true) => format!(
                    "  (test component breaks the contract: missing {missing:?}, outside {foreign:?})"
                ),
                (false, false) => format!("  MISSING {missing:?} OUTSIDE CONTRACT {foreign:?}"),
            }
        );
        if !ok && !is_test {
            bad.push(g.name.clone());
        }
    }
    if !bad.is_empty() {
        bail!(
            "components not matching their slot's contract: {}",
            bad.join(", ")
        );
    }
    Ok(())
}

trait DecodedExt {
    fn package_world_id(&self) -> Result<wit_parser::WorldId>;
}

impl DecodedExt for wit_component::DecodedWasm {
    fn package_world_id(&self) -> Result<wit_parser::WorldId> {
        match self {
            wit_component::DecodedWasm::Component(_, world) => Ok(*world),
            wit_component::DecodedWasm::WitPackage(..) => {
                bail!("file is a WIT package, not a component")
            }
        }
    }
}
