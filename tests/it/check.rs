//! `gatehouse check`: every error with its position, all at once.

use std::path::Path;

use crate::support::check;

#[test]
fn three_errors_are_all_reported_with_positions() {
    let (code, stdout, stderr) = check(Path::new("tests/fixtures/three-errors.yaml"));
    let expected = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/three-errors.expected"),
    )
    .unwrap();
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stderr.trim_end(), expected.trim_end());
    assert_eq!(stderr.lines().count(), 3);
}

#[test]
fn valid_configs_print_a_summary() {
    for file in ["tests/fixtures/valid-full.yaml", "gateway.yaml"] {
        let (code, stdout, stderr) = check(Path::new(file));
        assert_eq!(code, 0, "{file}: {stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.contains("ok"), "{stdout}");
    }
}

#[test]
fn environment_interpolation_reaches_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    std::fs::write(
        &path,
        "listen: ${GH_TEST_LISTEN:-127.0.0.1:7777}\nadmin_listen: \"${GH_TEST_UNSET_ADMIN}\"\n",
    )
    .unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 1);
    assert!(stderr.contains("g.yaml:2:"), "{stderr}");
    assert!(stderr.contains("GH_TEST_UNSET_ADMIN"), "{stderr}");
}

/// The configs embedded in the Kubernetes examples stay valid: each manifest's
/// `gateway.yaml: |` block, checked as the binary would read it.
#[test]
fn the_kubernetes_examples_carry_valid_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for manifest in ["deploy/kubernetes.yaml", "deploy/kubernetes-redis.yaml"] {
        let text = std::fs::read_to_string(root.join(manifest)).unwrap();
        let mut lines = text.lines().skip_while(|l| l.trim() != "gateway.yaml: |");
        assert!(lines.next().is_some(), "{manifest}: no gateway.yaml block");
        let config: String = lines
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        assert!(config.contains("routes:"), "{manifest}: {config}");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, &config).unwrap();
        let out = std::process::Command::new(crate::support::BIN)
            .args(["check", "--config"])
            .arg(&path)
            .env("REDIS_PASSWORD", "example")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{manifest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
