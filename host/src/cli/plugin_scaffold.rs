//! `paynode plugin new`: a component crate from the slot's template (the
//! `plugins/template-*` crates, which CI builds and tests, so a scaffold
//! starts green). Inside the paynode repo the crate joins its workspace;
//! anywhere else it stands alone: its own workspace and guest profile, the
//! WIT, the fixture schema and (for adapters) the guest SDK vendored, and
//! the repo's lockfile, so it builds with `paynode plugin build` with the
//! same dependency versions CI tested.

use std::path::{Path, PathBuf};

use crate::components::Slot;

/// Files of a template: (path in the crate, text).
type Files = Vec<(&'static str, &'static str)>;

macro_rules! repo_file {
    ($path:literal) => {
        include_str!(concat!("../../../", $path))
    };
}

fn template(slot: Slot) -> Files {
    match slot {
        Slot::PspAdapter => vec![
            (
                "Cargo.toml",
                repo_file!("plugins/template-psp-adapter/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                repo_file!("plugins/template-psp-adapter/src/lib.rs"),
            ),
            (
                "plugin.toml",
                repo_file!("plugins/template-psp-adapter/plugin.toml"),
            ),
            (
                "fixtures/cases.json",
                repo_file!("plugins/template-psp-adapter/fixtures/cases.json"),
            ),
        ],
        Slot::RetryPolicy => vec![
            (
                "Cargo.toml",
                repo_file!("plugins/template-retry-policy/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                repo_file!("plugins/template-retry-policy/src/lib.rs"),
            ),
            (
                "fixtures/cases.json",
                repo_file!("plugins/template-retry-policy/fixtures/cases.json"),
            ),
        ],
        Slot::PostingRules => vec![
            (
                "Cargo.toml",
                repo_file!("plugins/template-posting-rules/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                repo_file!("plugins/template-posting-rules/src/lib.rs"),
            ),
            (
                "fixtures/cases.json",
                repo_file!("plugins/template-posting-rules/fixtures/cases.json"),
            ),
        ],
    }
}

/// What a crate outside the repo carries of it.
fn vendored(slot: Slot) -> Files {
    let mut files = match slot {
        Slot::PspAdapter => vec![
            (
                "wit/psp-adapter/adapter.wit",
                repo_file!("wit/psp-adapter/adapter.wit"),
            ),
            (
                "wit/psp-adapter/fixtures.schema.json",
                repo_file!("wit/psp-adapter/fixtures.schema.json"),
            ),
            (
                "paynode-guest/Cargo.toml",
                repo_file!("plugins/paynode-guest/Cargo.toml"),
            ),
            (
                "paynode-guest/src/lib.rs",
                repo_file!("plugins/paynode-guest/src/lib.rs"),
            ),
            (
                "paynode-guest/src/json.rs",
                repo_file!("plugins/paynode-guest/src/json.rs"),
            ),
            (
                "paynode-guest/src/money.rs",
                repo_file!("plugins/paynode-guest/src/money.rs"),
            ),
            (
                "paynode-guest/src/outcome.rs",
                repo_file!("plugins/paynode-guest/src/outcome.rs"),
            ),
            (
                "paynode-guest/src/table.rs",
                repo_file!("plugins/paynode-guest/src/table.rs"),
            ),
        ],
        Slot::RetryPolicy => vec![
            (
                "wit/retry-policy/policy.wit",
                repo_file!("wit/retry-policy/policy.wit"),
            ),
            (
                "wit/retry-policy/fixtures.schema.json",
                repo_file!("wit/retry-policy/fixtures.schema.json"),
            ),
        ],
        Slot::PostingRules => vec![
            (
                "wit/posting-rules/rules.wit",
                repo_file!("wit/posting-rules/rules.wit"),
            ),
            (
                "wit/posting-rules/fixtures.schema.json",
                repo_file!("wit/posting-rules/fixtures.schema.json"),
            ),
        ],
    };
    files.push(("Cargo.lock", repo_file!("Cargo.lock")));
    files.push((".gitignore", "/target\n"));
    files
}

/// A crate of its own: no workspace inheritance, paths into the vendored
/// copies, the guest profile `paynode plugin build` uses.
fn standalone(file: &str, text: &str) -> String {
    match file {
        "Cargo.toml" => {
            let manifest = text
                .replace("edition.workspace = true", "edition = \"2021\"")
                .replace("version.workspace = true", "version = \"0.1.0\"")
                .replace("license.workspace = true", "license = \"Apache-2.0\"")
                .replace("publish.workspace = true", "publish = false")
                .replace(
                    "wit-bindgen.workspace = true",
                    "wit-bindgen = { version = \"0.46\", default-features = false, features = [\"macros\", \"realloc\"] }",
                )
                .replace("\"../../plugins/paynode-guest\"", "\"paynode-guest\"");
            format!("{manifest}{STANDALONE_MANIFEST_TAIL}")
        }
        "src/lib.rs" => text.replace("path: \"../../wit/", "path: \"wit/"),
        "paynode-guest/src/lib.rs" => text.replace("path: \"../../wit/", "path: \"../wit/"),
        _ if file.starts_with("fixtures/") => text.replace("\"../../../wit/", "\"../wit/"),
        _ => text.to_string(),
    }
}

const STANDALONE_MANIFEST_TAIL: &str = r#"
# A workspace of its own (not part of any enclosing one).
[workspace]

# What `paynode plugin build` compiles with: small, abort on panic (the host
# sees a trap).
[profile.guest]
inherits = "release"
opt-level = "s"
panic = "abort"
lto = true
codegen-units = 1
debug = false
strip = true
"#;

/// The paynode repo `dir` lies in, if any (its workspace lists `plugins/*`).
fn paynode_root(dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    dir.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.contains("[workspace]") && t.contains("\"plugins/*\""))
        })
        .map(Path::to_path_buf)
}

/// Writes a new component crate under `parent`; returns its folder and
/// whether it stands alone (outside the paynode repo).
pub fn scaffold(slot: Slot, name: &str, parent: &Path) -> anyhow::Result<(PathBuf, bool)> {
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
    std::fs::create_dir_all(parent)?;
    let alone = match paynode_root(parent) {
        None => true,
        // Inside the repo, templates' `../../` paths need the crate two
        // levels below the root (psp-adapters/NAME, plugins/NAME, ...).
        Some(root) => {
            let depth = parent
                .canonicalize()?
                .strip_prefix(&root)?
                .components()
                .count();
            anyhow::ensure!(
                depth == 1,
                "inside the paynode repo a component crate goes one folder below the root (e.g. psp-adapters/); use --dir outside the repo for a crate of its own"
            );
            false
        }
    };
    let mut files = template(slot);
    if alone {
        files.extend(vendored(slot));
    }
    for (file, text) in files {
        let text = text
            .replace(&format!("template-{slot}"), name)
            .replace(&format!("Starting point for a new {slot} component (`paynode plugin new {slot} <name>` copies it)"), &format!("The {name} {slot} component"));
        let text = if alone { standalone(file, &text) } else { text };
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("files have parents"))?;
        std::fs::write(&path, text)?;
    }
    Ok((dir, alone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_outside_the_repo_inherits_nothing_and_vendors_the_wit() {
        let parent = std::env::temp_dir().join(format!("paynode-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let (dir, alone) = scaffold(Slot::PspAdapter, "psp-outside", &parent).unwrap();
        assert!(alone);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(!manifest.contains(".workspace"), "{manifest}");
        assert!(manifest.contains("name = \"psp-outside\"") && manifest.contains("[workspace]"));
        assert!(manifest.contains("path = \"paynode-guest\""));
        let sdk = std::fs::read_to_string(dir.join("paynode-guest/src/lib.rs")).unwrap();
        assert!(sdk.contains("path: \"../wit/psp-adapter\""));
        assert!(dir.join("wit/psp-adapter/adapter.wit").is_file());
        let fixtures = std::fs::read_to_string(dir.join("fixtures/cases.json")).unwrap();
        assert!(fixtures.contains("\"../wit/psp-adapter/fixtures.schema.json\""));
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
