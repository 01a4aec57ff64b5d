//! The YAML text as a small tree of positioned nodes, the only place that knows the YAML library.
//!
//! `saphyr` parses (and rejects duplicate keys); this module turns its `MarkedYaml` into
//! [`Node`]s whose scalars are kept as text, so decoders interpolate and parse them on demand
//! and every value still knows its `line:column`. Swapping the YAML library touches this file
//! alone.

use saphyr::{LoadableYamlNode, MarkedYaml, Marker, Scalar, YamlData};

/// A 1-based position in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(marker: &Marker) -> Pos {
        // saphyr lines are 1-based but columns 0-based; a default (synthetic) marker has line 0.
        Pos {
            line: marker.line().max(1),
            column: marker.col() + 1,
        }
    }
}

/// One YAML value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    /// `~`, `null` or an empty value.
    Null,
    /// Any scalar, as text: `true`, `8080` and `30s` alike.
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries in document order: key, the key's position, value.
    Map(Vec<(String, Pos, Node)>),
}

impl Node {
    /// What this node is, for "expected ..., found ..." messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "null".into(),
            Kind::Scalar(text) => format!("\"{text}\""),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }
}

/// A problem found while reading the YAML itself (syntax, duplicate keys, unsupported features).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Parses `source` as exactly one YAML document. An empty file (or one holding only comments)
/// is an empty mapping.
pub(super) fn parse(source: &str) -> Result<Node, Vec<YamlError>> {
    let docs = MarkedYaml::load_from_str(source).map_err(|e| {
        vec![YamlError {
            pos: Pos::of(e.marker()),
            message: syntax_message(e.info(), source, e.marker()),
        }]
    })?;
    let mut docs = docs.into_iter();
    let Some(first) = docs.next() else {
        return Ok(Node {
            pos: Pos::START,
            kind: Kind::Map(Vec::new()),
        });
    };
    if let Some(second) = docs.next() {
        return Err(vec![YamlError {
            pos: Pos::of(&second.span.start),
            message: "the file holds more than one YAML document; only one is allowed".into(),
        }]);
    }
    let mut errors = Vec::new();
    let mut root = convert(&first, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    if root.kind == Kind::Null {
        root.kind = Kind::Map(Vec::new());
    }
    Ok(root)
}

/// saphyr's messages, with the duplicated key named (it reports only its position).
fn syntax_message(info: &str, source: &str, marker: &Marker) -> String {
    if info == "duplicated key in mapping" {
        let key: String = source
            .chars()
            .skip(marker.index())
            .take_while(|c| !matches!(c, ':' | '\n' | ',' | '}'))
            .collect();
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        if !key.is_empty() && !key.contains(['[', '{', '?']) {
            return format!("duplicate key `{key}`");
        }
        return "duplicate key in mapping".into();
    }
    format!("invalid YAML: {info}")
}

fn convert(yaml: &MarkedYaml<'_>, errors: &mut Vec<YamlError>) -> Node {
    let pos = Pos::of(&yaml.span.start);
    let kind = match &yaml.data {
        YamlData::Value(scalar) => scalar_kind(scalar),
        YamlData::Representation(text, _, _) => Kind::Scalar(text.to_string()),
        YamlData::Sequence(items) => Kind::Seq(items.iter().map(|i| convert(i, errors)).collect()),
        YamlData::Mapping(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let key_pos = Pos::of(&key.span.start);
                match &key.data {
                    YamlData::Value(scalar) => {
                        let name = match scalar_kind(scalar) {
                            Kind::Scalar(text) => text,
                            _ => String::new(),
                        };
                        out.push((name, key_pos, convert(value, errors)));
                    }
                    _ => errors.push(YamlError {
                        pos: key_pos,
                        message: "mapping keys must be plain strings".into(),
                    }),
                }
            }
            Kind::Map(out)
        }
        YamlData::Tagged(tag, _) => {
            errors.push(YamlError {
                pos,
                message: format!("YAML tag `{tag}` is not supported"),
            });
            Kind::Null
        }
        YamlData::Alias(_) | YamlData::BadValue => {
            errors.push(YamlError {
                pos,
                message: "invalid YAML value".into(),
            });
            Kind::Null
        }
    };
    Node { pos, kind }
}

fn scalar_kind(scalar: &Scalar<'_>) -> Kind {
    match scalar {
        Scalar::Null => Kind::Null,
        Scalar::Boolean(b) => Kind::Scalar(b.to_string()),
        Scalar::Integer(i) => Kind::Scalar(i.to_string()),
        Scalar::FloatingPoint(f) => Kind::Scalar(f.to_string()),
        Scalar::String(s) => Kind::Scalar(s.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scalar(s: &str) -> Kind {
        Kind::Scalar(s.into())
    }

    fn at(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    fn map(node: &Node) -> &[(String, Pos, Node)] {
        match &node.kind {
            Kind::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn keeps_positions_and_scalars_as_text() {
        let src = "# comment\nlisten: 0.0.0.0:8080\nlimits:\n  a: 32KiB\n  b: true\n  c: 12\n  d: \"x\"\n  e:\n  f: ~\nlist: [a, 'b']\n";
        let root = parse(src).unwrap();
        assert_eq!(root.pos, at(2, 1));
        let top = map(&root);
        assert_eq!(top[0].0, "listen");
        assert_eq!(top[0].1, at(2, 1));
        assert_eq!(top[0].2.pos, at(2, 9));
        assert_eq!(top[0].2.kind, scalar("0.0.0.0:8080"));
        let limits = &top[1].2;
        assert_eq!(limits.pos, at(4, 3));
        let l = map(limits);
        assert_eq!(l[0].2.kind, scalar("32KiB"));
        assert_eq!(l[1].2.kind, scalar("true"));
        assert_eq!(l[2].2.kind, scalar("12"));
        assert_eq!(l[3].2.kind, scalar("x"));
        assert_eq!(l[3].2.pos, at(7, 6));
        assert_eq!(l[4].2.kind, Kind::Null);
        assert_eq!(l[5].2.kind, Kind::Null);
        let Kind::Seq(items) = &top[2].2.kind else {
            panic!("not a list")
        };
        assert_eq!(items[1].kind, scalar("b"));
        assert_eq!(items[1].pos, at(10, 11));
    }

    #[test]
    fn quoted_null_is_a_string() {
        let root = parse("a: 'null'\n").unwrap();
        assert_eq!(map(&root)[0].2.kind, scalar("null"));
    }

    #[test]
    fn empty_file_is_an_empty_map() {
        for src in ["", "# nothing\n", "---\n", "~\n"] {
            assert_eq!(parse(src).unwrap().kind, Kind::Map(Vec::new()), "{src:?}");
        }
    }

    #[test]
    fn syntax_error_is_positioned() {
        let errs = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.starts_with("invalid YAML: "), "{errs:?}");
        let errs = parse("a: b: c\n").unwrap_err();
        assert_eq!(errs[0].pos, at(1, 5));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let errs = parse("a: 1\nb:\n  c: 2\n  c: 3\n").unwrap_err();
        assert_eq!(
            errs,
            vec![YamlError {
                pos: at(4, 3),
                message: "duplicate key `c`".into()
            }]
        );
        let errs = parse("x: {k: 1, \"k\": 2}\n").unwrap_err();
        assert_eq!(errs[0].message, "duplicate key `k`");
    }

    #[test]
    fn several_documents_are_an_error() {
        let errs = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(errs[0].pos, at(3, 1));
        assert!(errs[0].message.contains("more than one YAML document"));
    }

    #[test]
    fn unsupported_tags_and_complex_keys_are_errors() {
        let errs = parse("a: !custom x\n? [k]\n: v\n").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].pos, at(1, 4));
        assert_eq!(errs[1].message, "mapping keys must be plain strings");
    }

    #[test]
    fn aliases_are_expanded() {
        let root = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert_eq!(map(&map(&root)[1].2)[0].2.kind, scalar("1"));
    }
}
