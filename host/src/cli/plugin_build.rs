//! `paynode plugin build DIR`: one component crate → one component, with
//! the toolchain selection and build steps of `cargo xtask components`
//! (both use the `guest-build` crate), for a crate that lives anywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use guest_build::{Package, Toolchain};

/// The crate's package, as `cargo metadata` names it.
fn package_of(dir: &Path) -> anyhow::Result<Package> {
    let manifest = dir.join("Cargo.toml");
    let out = Command::new(guest_build::cargo_bin())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed ({})",
        out.status
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = manifest.canonicalize()?;
    let package = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().map(PathBuf::from).as_ref() == Some(&manifest))
        .ok_or_else(|| anyhow::anyhow!("{} names no package", manifest.display()))?;
    anyhow::ensure!(
        package["metadata"]["paynode"]["slot"].is_string(),
        "{} is not a component crate ([package.metadata.paynode] slot is missing)",
        manifest.display()
    );
    Ok(Package {
        name: package["name"].as_str().unwrap_or_default().to_string(),
        id: package["id"].as_str().unwrap_or_default().to_string(),
    })
}

/// Builds the crate in `dir`; returns the component's path.
pub fn build(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}", dir.display()))?;
    let package = package_of(&dir)?;
    let toolchain = Toolchain::detect()?;
    eprintln!("toolchain: {}", toolchain.describe());
    // Shared between crates (the std build and dependencies are reused);
    // CI points it at its cache.
    let target_dir = std::env::var_os("PAYNODE_GUEST_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| dir.join("target").join("wasm-guests"), PathBuf::from);
    let name = package.name.clone();
    let cores = guest_build::build_core_modules(&dir, &target_dir, &[package], &toolchain)?;
    let core = std::fs::read(&cores[&name])?;
    let component = guest_build::componentize(&core)?;
    let path = out.map_or_else(
        || dir.join("target").join(format!("{name}.wasm")),
        Path::to_path_buf,
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, &component).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "{name}: {} bytes, sha256 {}",
        component.len(),
        crate::components::runtime::sha256_hex(&component)
    );
    Ok(path)
}
