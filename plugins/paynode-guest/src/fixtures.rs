//! The fixture files `paynode plugin test` runs against a built component,
//! read for the crate's native tests so its pure logic answers the same
//! cases without a component build.

use serde_json::Value;

/// One case of a fixture file, with the config it runs under (its own, or
/// the file's).
pub struct Case {
    pub file: String,
    pub case: Value,
    pub config: Vec<(String, String)>,
}

/// Every case of every file in `<crate_dir>/fixtures`, files in name order.
/// Panics on a malformed file: a test's fixtures are part of the test.
pub fn cases(crate_dir: &str) -> Vec<Case> {
    let dir = std::path::Path::new(crate_dir).join("fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable fixtures dir").path())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).expect("a readable fixture"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        for case in doc["cases"].as_array().expect("a `cases` array") {
            let config = config_of(case.get("config").unwrap_or(&doc["config"]));
            out.push(Case {
                file: file.clone(),
                case: case.clone(),
                config,
            });
        }
    }
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// Whether `got` is what `want` expects; `"*"` matches anything (the
/// harness's wildcard).
pub fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(w), _) if w == "*" => true,
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len()
                && w.iter()
                    .all(|(k, v)| g.get(k).is_some_and(|g| matches(v, g)))
        }
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(w, g)| matches(w, g))
        }
        _ => want == got,
    }
}

/// A fixture's config object as the (key, value) list a component receives.
fn config_of(v: &Value) -> Vec<(String, String)> {
    if v.is_null() {
        return Vec::new();
    }
    v.as_object()
        .expect("a config object")
        .iter()
        .map(|(k, v)| {
            let value = v.as_str().expect("string config values");
            (k.clone(), value.to_string())
        })
        .collect()
}
