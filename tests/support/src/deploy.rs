//! The cluster-ingress manifests (`config/kubernetes/`) as `kubectl apply -k` would send
//! them: built by the real kustomize inside kubectl, then turned into JSON by
//! `kubectl patch --local` with an empty merge patch, which never contacts a cluster
//! (`kubectl create --dry-run=client` would: it asks the API server for discovery).
//! kubectl is the one `scripts/peers` builds. No YAML crate needed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// `config/kubernetes` in this checkout.
pub fn folder() -> PathBuf {
    crate::repo_root().join("config/kubernetes")
}

fn kubectl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(super::peer("kubectl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl (scripts/peers builds it)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every object `kubectl apply -k config/kubernetes` would apply, in order. Built once
/// per test binary.
pub fn manifests() -> &'static [Value] {
    static BUILT: OnceLock<Vec<Value>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = folder();
        let yaml = kubectl(&["kustomize", dir.to_str().unwrap()], b"");
        let json = kubectl(
            &[
                "patch", "--local", "-f", "-", "--type", "merge", "-p", "{}", "-o", "json",
            ],
            &yaml,
        );
        // One JSON document per object, one after the other.
        let objects: Vec<Value> = serde_json::Deserializer::from_slice(&json)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!objects.is_empty(), "kubectl built nothing");
        objects
    })
}

/// The one object of `kind`.
pub fn object(kind: &str) -> &'static Value {
    let mut found = manifests().iter().filter(|o| o["kind"] == kind);
    let one = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} in config/kubernetes"));
    assert!(found.next().is_none(), "more than one {kind}");
    one
}

/// The rules of the shipped Role as (resource, verbs), in the manifest's order.
pub fn role_rules() -> Vec<(String, Vec<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    object("Role")["rules"]
        .as_array()
        .expect("the Role has rules")
        .iter()
        .flat_map(|rule| {
            let verbs = strings(&rule["verbs"]);
            strings(&rule["resources"])
                .into_iter()
                .map(move |resource| (resource, verbs.clone()))
        })
        .collect()
}
