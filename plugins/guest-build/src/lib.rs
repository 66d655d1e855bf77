//! Building one or more guest crates into WebAssembly components, the same
//! way wherever it happens (`cargo xtask components` in the repo,
//! `paynode plugin build` for a crate of its own): pick a wasm toolchain,
//! `cargo build` the crates for wasm32 with the `guest` profile, and turn
//! each core module into a component.

use std::collections::BTreeMap;
use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
pub const GUEST_PROFILE: &str = "guest";

pub fn cargo_bin() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A crate to build: its package name and cargo package id.
pub struct Package {
    pub name: String,
    pub id: String,
}

pub enum Toolchain {
    /// rustup's active toolchain has the wasm32 target installed.
    Rustup { rustc: String },
    /// Some rustc with the std sources (e.g. Debian's rustc-web + rust-web-src):
    /// build std ourselves and link with an external rust-lld.
    BuildStd { rustc: PathBuf, linker: PathBuf },
}

impl Toolchain {
    pub fn detect() -> Result<Self> {
        if let Ok(out) = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .stderr(Stdio::null())
            .output()
        {
            let listed = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && listed.lines().any(|l| l.trim() == WASM_TARGET) {
                let rustc = Command::new("rustup")
                    .args(["which", "rustc"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_else(|| "rustc".to_string());
                return Ok(Toolchain::Rustup { rustc });
            }
        }
        let rustc = find_rustc_with_src()?;
        let linker = find_linker()?;
        Ok(Toolchain::BuildStd { rustc, linker })
    }

    pub fn describe(&self) -> String {
        match self {
            Toolchain::Rustup { rustc } => {
                format!("rustup toolchain with {WASM_TARGET} installed ({rustc})")
            }
            Toolchain::BuildStd { rustc, linker } => format!(
                "{} with -Zbuild-std=std,panic_abort (RUSTC_BOOTSTRAP=1), linker {}",
                rustc.display(),
                linker.display()
            ),
        }
    }

    pub fn apply(&self, cmd: &mut Command) {
        if let Toolchain::BuildStd { rustc, linker } = self {
            cmd.env("RUSTC", rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker)
                .arg("-Zbuild-std=std,panic_abort");
        }
    }
}

fn rustc_sysroot(rustc: &Path) -> Option<PathBuf> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn find_rustc_with_src() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("PAYNODE_GUEST_RUSTC") {
        candidates.push(p.into());
    }
    candidates.push("/usr/bin/rustc".into());
    for rustc in &candidates {
        if let Some(sysroot) = rustc_sysroot(rustc) {
            let lib = sysroot.join("lib/rustlib/src/rust/library/std/Cargo.toml");
            if lib.is_file() {
                return Ok(rustc.clone());
            }
        }
    }
    bail!(
        "no usable wasm toolchain: `rustup target list --installed` lacks {WASM_TARGET} and none of {:?} has the std sources (install rust-src, or Debian's rustc-web + rust-web-src, or set PAYNODE_GUEST_RUSTC)",
        candidates
    )
}

fn find_linker() -> Result<PathBuf> {
    if let Some(p) = env::var_os("PAYNODE_WASM_LINKER") {
        return Ok(p.into());
    }
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")));
    if let Some(home) = rustup_home {
        if let Ok(entries) = fs::read_dir(home.join("toolchains")) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| {
                    e.path()
                        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld")
                })
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            if let Some(p) = found.into_iter().next() {
                return Ok(p);
            }
        }
    }
    for name in ["rust-lld", "wasm-ld"] {
        if let Some(paths) = env::var_os("PATH") {
            for dir in env::split_paths(&paths) {
                let p = dir.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
    }
    bail!("no wasm linker found (rust-lld under ~/.rustup/toolchains, rust-lld or wasm-ld on PATH); set PAYNODE_WASM_LINKER")
}

/// `cargo build`s `guests` of the workspace at `root` for wasm32; returns
/// each package's core module.
pub fn build_core_modules(
    root: &Path,
    target_dir: &Path,
    guests: &[Package],
    tc: &Toolchain,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(root)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["--target", WASM_TARGET, "--profile", GUEST_PROFILE])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics");
    tc.apply(&mut cmd);
    for g in guests {
        cmd.args(["-p", &g.name]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("spawning cargo build")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut artifacts = BTreeMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            println!("{line}");
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let Some(guest) = guests.iter().find(|g| msg["package_id"] == g.id.as_str()) else {
            continue;
        };
        let wasm = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        if let Some(f) = wasm {
            artifacts.insert(guest.name.clone(), PathBuf::from(f));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build of the guest crates failed ({status})");
    }
    for g in guests {
        if !artifacts.contains_key(&g.name) {
            bail!(
                "cargo produced no .wasm for {} (is it crate-type = [\"cdylib\"]?)",
                g.name
            );
        }
    }
    Ok(artifacts)
}

/// A core module as a component (its WIT world is embedded by wit-bindgen).
pub fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .context("loading the core module")?
        .validate(true)
        .encode()
        .context("encoding the component")
}
