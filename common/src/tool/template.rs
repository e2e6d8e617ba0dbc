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

use std::collections::{BTreeMap, HashSet};

use indexmap::IndexMap;

use serde_json::Value;

use super::{CommandElement, Param, ParamType};

/// One part of an argv element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, copied as is.
    Text(String),
    /// A `{{name}}` placeholder: the parameter's name, trimmed.
    Param(String),
}

/// An argv element as written, split into literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg(pub Vec<Piece>);

/// An element of a tool's `command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Element {
    /// One argv element (or one per item, for a sole array placeholder); left out when a
    /// parameter it names is absent.
    Arg(Arg),
    /// A conditional group: `args` are kept only when `when` is given and not `false`.
    Group {
        /// The parameter that switches the group on.
        when: String,
        /// The elements it adds; if any is left out, the whole group is.
        args: Vec<Arg>,
    },
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

/// The parameters whose value can begin an argv element with no `--` element before it in
/// the command: there a value such as `--upload-pack=...` would reach the program as an
/// option. (A `--` inside a group does not count: the group may be left out.)
pub fn option_positions(command: &[Element]) -> HashSet<String> {
    let mut found = HashSet::new();
    let starts_with_param = |arg: &Arg| match arg.0.first() {
        Some(Piece::Param(name)) => Some(name.clone()),
        _ => None,
    };
    // `command[0]` is the program; the options it reads come after it.
    for element in command.iter().skip(1) {
        match element {
            Element::Arg(arg) => {
                if arg.0 == [Piece::Text("--".into())] {
                    break;
                }
                found.extend(starts_with_param(arg));
            }
            Element::Group { args, .. } => {
                found.extend(args.iter().filter_map(starts_with_param));
            }
        }
    }
    found
}

/// Marks each string or array parameter of `params` that [`option_positions`] finds in
/// `command`.
pub fn mark_option_positions(command: &[Element], params: &mut [super::params::CompiledParam]) {
    let at = option_positions(command);
    for p in params {
        // Only text can spell an option; a number stays a number.
        let text = matches!(p.spec.kind, ParamType::String | ParamType::Array);
        p.option_position = text && at.contains(&p.name);
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

/// Checks a tool's `command` (at `{at}.command`) against its `params` and compiles it: every
/// placeholder names a parameter, an array parameter is a whole element, `command[0]` is a
/// fixed program, and every parameter is used. Every problem goes to `problem`.
pub fn compile(
    command: &[CommandElement],
    params: &IndexMap<String, Param>,
    at: &str,
    problem: &mut dyn FnMut(String, String),
) -> Vec<Element> {
    let mut elements = Vec::new();
    let mut used = HashSet::new();
    if command.is_empty() {
        problem(
            format!("{at}.command"),
            "is empty: give the program and its arguments as a list".into(),
        );
    }
    let kind_of = |name: &str| params.get(name).map(|p| p.kind);
    let check_arg = |text: &str,
                     path: String,
                     problem: &mut dyn FnMut(String, String),
                     used: &mut HashSet<String>|
     -> Option<Arg> {
        let arg = match Arg::parse(text) {
            Ok(a) => a,
            Err(e) => {
                problem(path, e);
                return None;
            }
        };
        for name in arg.params() {
            used.insert(name.to_owned());
            match kind_of(name) {
                None => {
                    let known: Vec<_> = params.keys().map(String::as_str).collect();
                    problem(
                        path.clone(),
                        if known.is_empty() {
                            format!(
                                "`{{{{{name}}}}}` names no parameter (this tool declares none under `params`)"
                            )
                        } else {
                            format!(
                                "`{{{{{name}}}}}` names no parameter; parameters are: {}",
                                known.join(", ")
                            )
                        },
                    );
                }
                Some(ParamType::Array) if arg.sole_param() != Some(name) => problem(
                    path.clone(),
                    format!(
                        "array parameter `{name}` must be a whole element (`{{{{{name}}}}}`), since each item becomes its own element"
                    ),
                ),
                _ => {}
            }
        }
        Some(arg)
    };
    for (j, element) in command.iter().enumerate() {
        let path = format!("{at}.command[{j}]");
        match element {
            CommandElement::Arg(text) => {
                if j == 0 && text.contains("{{") {
                    problem(
                        path.clone(),
                        "the program (command[0]) is fixed: it takes no placeholder".into(),
                    );
                }
                if text.contains('\0') {
                    problem(path.clone(), "contains a NUL character".into());
                }
                if let Some(arg) = check_arg(text, path, &mut *problem, &mut used) {
                    elements.push(Element::Arg(arg));
                }
            }
            CommandElement::Group(group) => {
                if j == 0 {
                    problem(
                        path.clone(),
                        "the program (command[0]) must be a plain string".into(),
                    );
                }
                used.insert(group.when.clone());
                if kind_of(&group.when).is_none() {
                    problem(
                        format!("{path}.if"),
                        format!("`{}` names no parameter", group.when),
                    );
                }
                if group.args.is_empty() {
                    problem(format!("{path}.args"), "is empty".into());
                }
                let args: Vec<_> = group
                    .args
                    .iter()
                    .enumerate()
                    .filter_map(|(k, a)| {
                        check_arg(a, format!("{path}.args[{k}]"), &mut *problem, &mut used)
                    })
                    .collect();
                elements.push(Element::Group {
                    when: group.when.clone(),
                    args,
                });
            }
        }
    }
    for name in params.keys() {
        if !used.contains(name) {
            problem(
                format!("{at}.params.{name}"),
                format!(
                    "is not used in `command`: add `{{{{{name}}}}}` to an element, or remove the parameter"
                ),
            );
        }
    }
    elements
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
