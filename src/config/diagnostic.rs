//! One configuration problem, located in the file as `FILE:LINE:COLUMN: message`.
//!
//! This is the only shape in which config errors leave the `config` module: `gatehouse check`
//! prints them one a line, and a rejected reload logs them.

use std::fmt;
use std::path::PathBuf;

/// A problem found in a configuration file.
///
/// `line` and `column` are 1-based and point at the offending value, at the key for unknown or
/// duplicate keys, and at the enclosing mapping for missing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_file_line_column_message() {
        let d = Diagnostic {
            file: PathBuf::from("conf/gateway.yaml"),
            line: 3,
            column: 7,
            message: "unknown key `foo`".into(),
        };
        assert_eq!(d.to_string(), "conf/gateway.yaml:3:7: unknown key `foo`");
    }
}
