//! Mail templates: a subject, a text body and an HTML body per message kind, embedded in the
//! binary and overridable file by file from `accounts.email.templates_dir`.
//!
//! Templates hold `{{name}}` placeholders and nothing else (no conditionals, no loops).
//! Every template is parsed once at load, so an unknown placeholder or a stray `{{` is an
//! error at start rather than a broken mail later; rendering cannot fail. Values are
//! HTML-escaped in the HTML body, and line breaks are removed from the subject.

use std::path::{Path, PathBuf};

use super::MailError;
use super::message::{KINDS, Message};

/// The three parts of one kind's message.
const PARTS: [&str; 3] = ["subject.txt", "txt", "html"];

macro_rules! built_in {
    ($($kind:literal),* $(,)?) => {
        &[$(
            [
                include_str!(concat!("templates/", $kind, ".subject.txt")),
                include_str!(concat!("templates/", $kind, ".txt")),
                include_str!(concat!("templates/", $kind, ".html")),
            ],
        )*]
    };
}

/// The embedded templates, in the order of [`KINDS`] and [`PARTS`].
const BUILT_IN: &[[&str; 3]] = built_in!(
    "welcome",
    "verify_email",
    "reset_password",
    "magic_link",
    "invitation",
    "password_changed",
    "new_sign_in",
    "account_exists",
);

const _: () = assert!(BUILT_IN.len() == KINDS.len());

/// A parsed template: literal text and placeholder names, alternating.
#[derive(Debug, Clone)]
struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var(&'static str),
}

/// How values are written into a part.
#[derive(Debug, Clone, Copy)]
enum Escape {
    /// The subject: one line, so no header can be smuggled in.
    Header,
    Text,
    Html,
}

/// A rendered message, ready to be built into MIME.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Every kind's templates, loaded and checked.
#[derive(Debug, Clone)]
pub struct Templates {
    /// Indexed like [`KINDS`], then [`PARTS`].
    kinds: Vec<[Template; 3]>,
    /// Which files came from the templates directory (for the start-up log).
    overridden: Vec<String>,
}

impl Templates {
    /// The built-in templates, with any file of the same name in `dir` taking precedence.
    /// Blocking (reads files): call at start, before serving. Files in `dir` that look like
    /// templates but match no name are reported as warnings, not ignored silently.
    pub fn load(dir: Option<&Path>) -> Result<Templates, MailError> {
        let mut kinds = Vec::with_capacity(KINDS.len());
        let mut overridden = Vec::new();
        for ((kind, placeholders), sources) in KINDS.iter().zip(BUILT_IN) {
            let mut load = |i: usize| {
                let file = format!("{kind}.{}", PARTS[i]);
                let (origin, text) = match dir.map(|d| d.join(&file)) {
                    Some(path) => match std::fs::read_to_string(&path) {
                        Ok(text) => {
                            overridden.push(file);
                            (path, text)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            (built_in_origin(&file), sources[i].to_owned())
                        }
                        Err(source) => return Err(MailError::TemplateIo { path, source }),
                    },
                    None => (built_in_origin(&file), sources[i].to_owned()),
                };
                Template::parse(&text, placeholders).map_err(|reason| MailError::Template {
                    path: origin,
                    reason,
                })
            };
            kinds.push([load(0)?, load(1)?, load(2)?]);
        }
        if let Some(dir) = dir {
            warn_unknown_files(dir);
        }
        Ok(Templates { kinds, overridden })
    }

    /// The built-in templates only.
    pub fn built_in() -> Result<Templates, MailError> {
        Templates::load(None)
    }

    /// Names of the files taken from the templates directory.
    pub fn overridden(&self) -> &[String] {
        &self.overridden
    }

    pub(crate) fn render(&self, message: &Message, app_name: &str) -> Rendered {
        let name = message.kind.name();
        let vars = message.variables(app_name);
        let parts = KINDS
            .iter()
            .position(|(k, _)| *k == name)
            .and_then(|i| self.kinds.get(i));
        let render =
            |i: usize, escape| parts.map_or_else(String::new, |p| p[i].render(&vars, escape));
        Rendered {
            subject: render(0, Escape::Header).trim().to_owned(),
            text: render(1, Escape::Text),
            html: render(2, Escape::Html),
        }
    }
}

fn built_in_origin(file: &str) -> PathBuf {
    PathBuf::from(format!("(built-in) {file}"))
}

fn warn_unknown_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let looks_like_template = file.ends_with(".txt") || file.ends_with(".html");
        let known = KINDS
            .iter()
            .any(|(kind, _)| PARTS.iter().any(|part| file == format!("{kind}.{part}")));
        if looks_like_template && !known {
            let names: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
            tracing::warn!(
                target: "gatehouse::mail",
                dir = %dir.display(),
                file,
                "mail template file matches no template (expected KIND.subject.txt, KIND.txt \
                 or KIND.html, KIND one of: {})",
                names.join(", ")
            );
        }
    }
}

impl Template {
    fn parse(text: &str, placeholders: &[&'static str]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(format!(
                    "`{{{{` without a closing `}}}}` at byte {}",
                    text.len() - rest.len() + start
                ));
            };
            let name = after[..end].trim();
            let Some(&var) = placeholders.iter().find(|p| **p == name) else {
                return Err(format!(
                    "unknown placeholder `{{{{{name}}}}}` (this template may use: {})",
                    placeholders.join(", ")
                ));
            };
            pieces.push(Piece::Var(var));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template { pieces })
    }

    fn render(&self, vars: &[(&'static str, String)], escape: Escape) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => match escape {
                    Escape::Header => push_one_line(&mut out, text),
                    Escape::Text | Escape::Html => out.push_str(text),
                },
                Piece::Var(name) => {
                    let value = vars
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or("", |(_, v)| v.as_str());
                    match escape {
                        Escape::Header => push_one_line(&mut out, value),
                        Escape::Text => out.push_str(value),
                        Escape::Html => push_html_escaped(&mut out, value),
                    }
                }
            }
        }
        out
    }
}

/// Control characters (CR, LF, tab, ...) become spaces.
fn push_one_line(out: &mut String, text: &str) {
    out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
}

fn push_html_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::super::message::MessageKind;
    use super::*;

    fn reset(name: &str) -> Message {
        Message::new(
            "ada@example.com",
            MessageKind::ResetPassword {
                link: "https://app.example.com/reset?token=abc&x=<1>".into(),
                expires_in: Duration::from_secs(3600),
            },
        )
        .with_user_name(name)
    }

    #[test]
    fn every_built_in_template_parses_and_link_kinds_show_the_link() {
        let t = Templates::built_in().unwrap();
        assert!(t.overridden().is_empty());
        for (kind, placeholders) in KINDS {
            for (i, part) in PARTS.iter().enumerate() {
                let idx = KINDS.iter().position(|(k, _)| k == kind).unwrap();
                let tpl = &t.kinds[idx][i];
                let vars: Vec<&str> = tpl
                    .pieces
                    .iter()
                    .filter_map(|p| match p {
                        Piece::Var(v) => Some(*v),
                        Piece::Text(_) => None,
                    })
                    .collect();
                if placeholders.contains(&"link") && *part != "subject.txt" {
                    assert!(vars.contains(&"link"), "{kind}.{part} has no {{{{link}}}}");
                    assert!(vars.contains(&"expires_in"), "{kind}.{part}");
                }
                assert!(!vars.is_empty(), "{kind}.{part} uses no placeholder");
            }
        }
    }

    #[test]
    fn values_are_escaped_in_html_only_and_subject_stays_one_line() {
        let t = Templates::built_in().unwrap();
        let r = t.render(&reset("<b>Ada</b> & \"Co\""), "Acme\r\nBcc: x@evil.test");
        assert_eq!(r.subject, "Reset your Acme  Bcc: x@evil.test password");
        assert!(r.text.contains("Hi <b>Ada</b> & \"Co\","), "{}", r.text);
        assert!(
            r.text
                .contains("https://app.example.com/reset?token=abc&x=<1>")
        );
        assert!(r.text.contains("expires in 1 hour"));
        assert!(
            r.html
                .contains("Hi &lt;b&gt;Ada&lt;/b&gt; &amp; &quot;Co&quot;,"),
            "{}",
            r.html
        );
        assert!(
            r.html
                .contains("href=\"https://app.example.com/reset?token=abc&amp;x=&lt;1&gt;\"")
        );
        assert!(!r.html.contains("<b>Ada"));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = Template::parse("Hi {{nme}}", &["name"]).unwrap_err();
        assert_eq!(
            err,
            "unknown placeholder `{{nme}}` (this template may use: name)"
        );
        let err = Template::parse("Hi {{name", &["name"]).unwrap_err();
        assert_eq!(err, "`{{` without a closing `}}` at byte 3");
        let t = Template::parse("{{ name }}!{{name}}", &["name"]).unwrap();
        let vars = [("name", "x".to_owned())];
        assert_eq!(t.render(&vars, Escape::Text), "x!x");
    }

    #[test]
    fn files_in_the_directory_override_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reset_password.subject.txt"),
            "Custom {{app_name}} reset\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("reset_password.html"),
            "<p>{{name}}: <a href=\"{{link}}\">go</a></p>",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(
            t.overridden(),
            ["reset_password.subject.txt", "reset_password.html"]
        );
        let r = t.render(&reset("A&B"), "Acme");
        assert_eq!(r.subject, "Custom Acme reset");
        assert_eq!(
            r.html,
            "<p>A&amp;B: <a href=\"https://app.example.com/reset?token=abc&amp;x=&lt;1&gt;\">go</a></p>"
        );
        // The text part was not overridden.
        assert!(r.text.contains("choose a"), "{}", r.text);
    }

    #[test]
    fn a_bad_override_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("welcome.txt");
        std::fs::write(&path, "Hi {{link}}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "mail template {}: unknown placeholder `{{{{link}}}}` (this template may use: \
                 app_name, name, email)",
                path.display()
            )
        );
    }
}
