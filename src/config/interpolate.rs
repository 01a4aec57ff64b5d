//! `${NAME}` / `${NAME:-default}` substitution in config values, as a pure function.
//!
//! The environment is passed in, so tests and `gatehouse check` never depend on the process
//! environment. Substituted text is not scanned again: a secret containing `${` or `$$` is
//! taken literally.

/// Replaces `${NAME}` and `${NAME:-default}` in `s` with values from `env`; `$$` is a literal `$`.
///
/// `${NAME:-default}` uses `default` when `NAME` is unset or empty, as the shell does. A `$` not
/// followed by `{` or `$` is kept as it is.
///
/// # Errors
/// A message when a variable without a default is unset, or when a `${` is malformed.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let Some(close) = body_and_tail.find('}') else {
                return Err(format!(
                    "unterminated `${{` in \"{s}\" (expected ${{NAME}} or ${{NAME:-default}}; \
                     write $$ for a literal $)"
                ));
            };
            let body = &body_and_tail[..close];
            out.push_str(&substitute(body, env)?);
            rest = &body_and_tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves the inside of one `${...}`.
fn substitute(body: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    if !is_valid_name(name) {
        return Err(if name.is_empty() {
            format!("empty variable name in `${{{body}}}`")
        } else {
            format!(
                "invalid variable reference `${{{body}}}`: expected ${{NAME}} or \
                 ${{NAME:-default}} with NAME made of letters, digits and _"
            )
        });
    }
    match (env(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(format!("environment variable {name} is not set")),
    }
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/gh".into()),
            "EMPTY" => Some(String::new()),
            "TRICKY" => Some("a${B}$$c".into()),
            _ => None,
        }
    }

    fn run(s: &str) -> Result<String, String> {
        interpolate(s, &env)
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(run("no variables here").unwrap(), "no variables here");
        assert_eq!(run("").unwrap(), "");
    }

    #[test]
    fn substitutes_set_variables() {
        assert_eq!(run("${HOME}").unwrap(), "/home/gh");
        assert_eq!(run("dir=${HOME}/data").unwrap(), "dir=/home/gh/data");
        assert_eq!(run("${HOME}${HOME}").unwrap(), "/home/gh/home/gh");
        assert_eq!(run("${EMPTY}").unwrap(), "");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(run("${NOPE:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${HOME:-fallback}").unwrap(), "/home/gh");
        assert_eq!(run("${NOPE:-}").unwrap(), "");
        assert_eq!(run("${NOPE:-a:-b}").unwrap(), "a:-b");
    }

    #[test]
    fn dollar_escapes() {
        assert_eq!(run("$$").unwrap(), "$");
        assert_eq!(run("$${HOME}").unwrap(), "${HOME}");
        assert_eq!(run("pa$$$${x}").unwrap(), "pa$${x}");
        assert_eq!(run("cost: 5$ or $5").unwrap(), "cost: 5$ or $5");
        assert_eq!(run("trailing $").unwrap(), "trailing $");
    }

    #[test]
    fn substituted_values_are_not_rescanned() {
        assert_eq!(run("${TRICKY}").unwrap(), "a${B}$$c");
    }

    #[test]
    fn unset_variable_is_an_error() {
        assert_eq!(
            run("x ${GITHUB_SECRET} y").unwrap_err(),
            "environment variable GITHUB_SECRET is not set"
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(run("${HOME").unwrap_err().starts_with("unterminated `${`"));
        assert!(run("${").unwrap_err().starts_with("unterminated `${`"));
        assert_eq!(run("${}").unwrap_err(), "empty variable name in `${}`");
        for bad in ["${1A}", "${A B}", "${A-x}", "${A:x}", "${A.B}", "${:-x}"] {
            assert!(run(bad).is_err(), "{bad}");
        }
        assert!(run("${_ok_1}").is_err_and(|e| e.contains("_ok_1 is not set")));
    }
}
