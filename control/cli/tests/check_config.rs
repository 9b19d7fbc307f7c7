//! `iketcp check-config` on the shipped examples and on a broken file.
#![allow(clippy::unwrap_used, reason = "test-only file: it fails by panicking")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_iketcp");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iketcp-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let psk = d.join("psk.secret");
    std::fs::write(&psk, "example key\n").unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    d
}

fn check(file: &Path) -> (bool, String) {
    let o = Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn the_example_configs_pass_check_config() {
    let d = scratch("examples");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    for f in ["site-a-initiator.toml", "site-b-responder.toml"] {
        let to = d.join(f);
        std::fs::copy(examples.join(f), &to).unwrap();
        let (ok, out) = check(&to);
        assert!(ok, "{f}: {out}");
        assert!(out.contains("OK: 1 connection(s)"), "{out}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_broken_config_fails_with_its_line_and_column() {
    let d = scratch("broken");
    let f = d.join("bad.toml");
    std::fs::write(
        &f,
        "[gateway]\nworkers = 1\n\n[[connection]]\nname = \"x\"\nremote_addrs = [\"192.0.2.300\"]\n",
    )
    .unwrap();
    let (ok, out) = check(&f);
    assert!(!ok, "{out}");
    assert!(out.contains("bad.toml:6:"), "{out}");
    assert!(out.contains("192.0.2.300"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}
