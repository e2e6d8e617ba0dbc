//! Command templates: argv elements with `{{param}}` placeholders, and conditional groups.
//!
//! Rendering rules (also in the README):
//! - a placeholder puts one parameter's value inside one argv element; a value never splits
//!   into several elements and never reaches a shell;
//! - an element whose placeholder names an optional parameter that was not given (and has no
//!   default) is left out whole;
//! - an element that is exactly `{{list}}` for an array parameter becomes one element per item;
//! - a group `{if: param, args: [...]}` is kept only when the parameter was given and, for a
//!   boolean, is true; if any of its args is left out, the whole group is;
//! - booleans inside an element read `true` or `false`; numbers read as JSON writes them.

use std::collections::BTreeMap;

use serde_json::Value;

/// One part of an argv element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Param(String),
}

/// An argv element as written, split into literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg(pub Vec<Piece>);

/// An element of a tool's `command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Element {
    Arg(Arg),
    Group { when: String, args: Vec<Arg> },
}

/// Whether `name` can be a parameter name.
pub fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

impl Arg {
    /// Splits `text` into literal text and `{{name}}` placeholders.
    pub fn parse(text: &str) -> Result<Arg, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` without a closing `}}}}` in `{text}`"))?;
            let name = after[..close].trim();
            if !is_param_name(name) {
                return Err(format!(
                    "`{{{{{}}}}}` is not a placeholder: write `{{{{name}}}}` with a parameter name",
                    &after[..close]
                ));
            }
            pieces.push(Piece::Param(name.to_owned()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Arg(pieces))
    }

    /// The parameters this element names.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Param(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The parameter name when the element is exactly one placeholder.
    pub fn sole_param(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Param(name)] => Some(name),
            _ => None,
        }
    }

    /// Renders into `out`; returns false (and adds nothing) when a named parameter is absent.
    fn render(&self, values: &BTreeMap<String, Value>, out: &mut Vec<String>) -> bool {
        if let Some(name) = self.sole_param()
            && let Some(Value::Array(items)) = values.get(name)
        {
            out.extend(items.iter().map(scalar_text));
            return true;
        }
        let mut text = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => text.push_str(t),
                Piece::Param(name) => match values.get(name) {
                    Some(v) => text.push_str(&scalar_text(v)),
                    None => return false,
                },
            }
        }
        out.push(text);
        true
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Builds argv from a command template and validated values (defaults already applied).
pub fn render(command: &[Element], values: &BTreeMap<String, Value>) -> Vec<String> {
    let mut argv = Vec::with_capacity(command.len());
    for element in command {
        match element {
            Element::Arg(arg) => {
                arg.render(values, &mut argv);
            }
            Element::Group { when, args } => {
                let on = match values.get(when) {
                    None | Some(Value::Bool(false)) | Some(Value::Null) => false,
                    Some(_) => true,
                };
                if !on {
                    continue;
                }
                let mut group = Vec::new();
                if args.iter().all(|a| a.render(values, &mut group)) {
                    argv.extend(group);
                }
            }
        }
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arg(s: &str) -> Element {
        Element::Arg(Arg::parse(s).unwrap())
    }

    fn values(v: Value) -> BTreeMap<String, Value> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    #[test]
    fn placeholders_fill_one_element_each() {
        let cmd = [arg("grep"), arg("-C{{n}}"), arg("--"), arg("{{pattern}}")];
        let argv = render(&cmd, &values(json!({"n": 2, "pattern": "a b; $(id)"})));
        assert_eq!(argv, ["grep", "-C2", "--", "a b; $(id)"]);
    }

    #[test]
    fn absent_optional_parameters_drop_their_element_or_group() {
        let cmd = [
            arg("ls"),
            Element::Group {
                when: "all".into(),
                args: vec![Arg::parse("-a").unwrap()],
            },
            Element::Group {
                when: "sort".into(),
                args: vec![
                    Arg::parse("--sort").unwrap(),
                    Arg::parse("{{sort}}").unwrap(),
                ],
            },
            arg("--color={{color}}"),
            arg("{{dir}}"),
        ];
        let argv = render(&cmd, &values(json!({"all": false, "dir": "/tmp"})));
        assert_eq!(argv, ["ls", "/tmp"]);
        let argv = render(
            &cmd,
            &values(json!({"all": true, "sort": "size", "color": true, "dir": "/"})),
        );
        assert_eq!(argv, ["ls", "-a", "--sort", "size", "--color=true", "/"]);
    }

    #[test]
    fn an_array_placeholder_spreads_into_elements() {
        let cmd = [arg("cat"), arg("--"), arg("{{files}}")];
        let argv = render(&cmd, &values(json!({"files": ["a b", "-c"]})));
        assert_eq!(argv, ["cat", "--", "a b", "-c"]);
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        assert!(Arg::parse("{{pattern").is_err());
        assert!(Arg::parse("{{.Id}}").is_err());
        assert_eq!(
            Arg::parse("{{ a }}x").unwrap().0,
            vec![Piece::Param("a".into()), Piece::Text("x".into())]
        );
    }
}
