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
