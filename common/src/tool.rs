//! Tool definitions both sides understand: a command template with its parameter rules
//! (`params`, `template`), and the signed, canonical form of a whole tool (`signed`) that an
//! agent can check for itself.
//!
//! The types here are what `mcpfier.yaml` says about a tool's command and parameters; the
//! coordinator's config embeds them, and an agent that requires signed tools compiles them from
//! the definition it verified, with the same code.

pub mod params;
pub mod paths;
pub mod signed;
pub mod template;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// An element of `command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandElement {
    /// One argv element, with optional `{{param}}` placeholders.
    Arg(String),
    /// Elements kept only when a parameter is given (and, for a boolean, true).
    Group(Group),
}

/// A conditional group of argv elements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The parameter that switches the group on.
    #[serde(rename = "if")]
    pub when: String,
    /// The elements it adds.
    pub args: Vec<String>,
}

impl<'de> Deserialize<'de> for CommandElement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CommandElement;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, or a group `{if: param, args: [...]}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CommandElement::Arg(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(CommandElement::Arg(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(CommandElement::Arg(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                Group::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(CommandElement::Group)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A JSON string.
    String,
    /// A whole number.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`; switches a group `{if: param, ...}` on when true.
    Boolean,
    /// An array of strings.
    Array,
    /// A file or directory inside `within`, resolved (symbolic links included) on the host
    /// that runs the call; the command gets the resolved absolute path.
    Path,
}

/// One parameter of a tool.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// The value's type: `string`, `integer`, `number`, `boolean`, `array` or `path`.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// What it means, for the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Used when a call leaves the parameter out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Whether a call must give it (default: true unless a default is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// string: a regular expression the value must match (unanchored, as in JSON Schema: use
    /// `^...$` to match the whole value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// string: fewest characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u64>,
    /// string: most characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// string or integer: the allowed values.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "enum")]
    pub choices: Option<Vec<Value>>,
    /// integer or number: smallest value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// integer or number: largest value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    /// array: rules for each item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<StringRules>,
    /// array: fewest items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_items: Option<u64>,
    /// array: most items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u64>,
    /// string or array: accept values that start with `-` where the value begins an argv
    /// element with no `--` before it in the command (where the program could read it as an
    /// option, e.g. `--upload-pack=...`). Refused by default.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_options: bool,
    /// string or array: accept Unicode bidirectional control characters (U+202A-U+202E,
    /// U+2066-U+2069, U+200E, U+200F, U+061C), which make text display in another order than
    /// it is. Refused by default.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_bidi: bool,
    /// path: the directory the value must resolve inside (absolute; required). A relative
    /// value is taken relative to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<std::path::PathBuf>,
    /// path: the value must name something that exists.
    #[serde(default, skip_serializing_if = "is_false")]
    pub must_exist: bool,
    /// The value is a secret: the audit file keeps only its SHA-256.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Param {
    /// This parameter's string rules.
    pub fn string_rules(&self) -> StringRules {
        StringRules {
            pattern: self.pattern.clone(),
            min_length: self.min_length,
            max_length: self.max_length,
            choices: self.choices.clone(),
        }
    }
}

/// Rules for a string (an array parameter's items).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StringRules {
    /// A regular expression each item must match (unanchored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Fewest characters in each item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u64>,
    /// Most characters in each item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// The values each item may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "enum")]
    pub choices: Option<Vec<Value>>,
}
