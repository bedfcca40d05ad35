//! `${namespace.name}` templates in param strings.
//!
//! Namespaces: `vars` are substituted when the pipeline is resolved, and so is a `${params.*}`
//! that is a whole value; a `${params.*}` inside a longer string is checked then but expanded
//! by the stage (the param it names is in the key already). `inputs` and `outs` name paths that
//! exist only when the stage runs, so the stage expands them too. `$${` writes a literal `${`.
//! A `${...}` that is not `namespace.name` (`${HOME}`, `${VAR:-default}`) is plain text, so
//! shell parameter expansions in commands reach the shell.

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text copied as is.
    Literal(&'a str),
    /// An escaped `$${`, written as `${`.
    EscapedDollar,
    /// `${namespace.name}`.
    Reference {
        /// `vars`, `params`, `inputs` or `outs`.
        namespace: &'a str,
        /// The name after the dot.
        name: &'a str,
        /// The whole `${...}` text.
        raw: &'a str,
    },
}

/// A malformed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
}

/// Splits a string into literal text and references.
pub fn parse(text: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let after = &rest[at..];
        if after.starts_with("$${") {
            if at > 0 {
                pieces.push(Piece::Literal(&rest[..at]));
            }
            pieces.push(Piece::EscapedDollar);
            rest = &rest[at + 3..];
        } else if after.starts_with("${") {
            if at > 0 {
                pieces.push(Piece::Literal(&rest[..at]));
            }
            let close = after.find('}').ok_or_else(|| TemplateError {
                message: format!("`{after}` opens `${{` but never closes it with `}}`"),
            })?;
            let raw = &after[..=close];
            let inner = after[2..close].trim();
            let identifier_end = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            match inner[identifier_end..].strip_prefix('.') {
                Some(name) if identifier_end > 0 => pieces.push(Piece::Reference {
                    namespace: &inner[..identifier_end],
                    name: name.trim(),
                    raw,
                }),
                // Not `${namespace.name}`: a shell parameter expansion such as `${HOME}` or
                // `${SLURM_JOB_ID:-local}`, left for the shell.
                _ => pieces.push(Piece::Literal(raw)),
            }
            rest = &after[close + 1..];
        } else {
            pieces.push(Piece::Literal(&rest[..=at]));
            rest = &rest[at + 1..];
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest));
    }
    Ok(pieces)
}

/// Expands the references of some namespaces with `lookup`; others, and escapes, are kept
/// verbatim for a later pass unless `final_pass` is set, which also unescapes `$${`.
pub fn expand(
    text: &str,
    final_pass: bool,
    mut lookup: impl FnMut(&str, &str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    for piece in parse(text)? {
        match piece {
            Piece::Literal(s) => out.push_str(s),
            Piece::EscapedDollar => out.push_str(if final_pass { "${" } else { "$${" }),
            Piece::Reference {
                namespace,
                name,
                raw,
            } => match lookup(namespace, name) {
                Some(value) => out.push_str(&value),
                None => out.push_str(raw),
            },
        }
    }
    Ok(out)
}

/// Quotes a value for a POSIX shell unless it is plainly safe.
pub fn shell_quote(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// A JSON value as the text a template pastes: strings bare, anything else as JSON
/// (`0.1`, `true`, `[1,2]`).
pub fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_literals_and_escapes() {
        let pieces = parse("a ${params.x} $${keep} $5").unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Literal("a "),
                Piece::Reference {
                    namespace: "params",
                    name: "x",
                    raw: "${params.x}"
                },
                Piece::Literal(" "),
                Piece::EscapedDollar,
                Piece::Literal("keep} $"),
                Piece::Literal("5"),
            ]
        );
    }

    #[test]
    fn expansion_keeps_other_namespaces_until_the_final_pass() {
        let first = expand("${params.x} ${outs.y} $${z}", false, |ns, n| {
            (ns == "params").then(|| format!("<{n}>"))
        })
        .unwrap();
        assert_eq!(first, "<x> ${outs.y} $${z}");
        let second = expand(&first, true, |ns, _| (ns == "outs").then(|| "/o".into())).unwrap();
        assert_eq!(second, "<x> /o ${z}");
    }

    #[test]
    fn unclosed_references_are_errors_and_shell_expansions_are_text() {
        assert!(parse("${params.x").is_err());
        assert_eq!(parse("${HOME}").unwrap(), vec![Piece::Literal("${HOME}")]);
        assert_eq!(
            parse("${JOB:-local}").unwrap(),
            vec![Piece::Literal("${JOB:-local}")]
        );
        assert!(matches!(
            parse("${param.x}").unwrap()[0],
            Piece::Reference {
                namespace: "param",
                ..
            }
        ));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a/b.csv"), "/a/b.csv");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
