//! The outbox backend: each message becomes one RFC 5322 `.eml` file in a folder, for running
//! without a mail server (the shipped default) and for tests.
//!
//! Files appear whole or not at all: the message is written to a hidden temporary file in the
//! same folder, flushed, then renamed to `<unix-millis>-<kind>-<id>.eml` (names sort by time).
//! Readers should only look at `*.eml`. Files are created owner-only (0600): their links
//! carry live tokens.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `raw` as `<stem>.eml` in `dir` (created if missing) and returns its path. Blocking:
/// run it on a blocking thread.
pub(crate) fn write(dir: &Path, stem: &str, raw: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{stem}.eml.tmp"));
    let path = dir.join(format!("{stem}.eml"));
    let written = write_new(&tmp, raw).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

fn write_new(path: &Path, raw: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(raw)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let path = write(&nested, "1-welcome-x", b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        assert_eq!(path, nested.join("1-welcome-x.eml"));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        let names: Vec<String> = std::fs::read_dir(&nested)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["1-welcome-x.eml"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_failed_write_reports_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        assert!(write(&file, "m", b"x").is_err());
    }
}
