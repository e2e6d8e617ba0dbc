//! Name globs, as `allow_tools` and `allow_images` use them: `*` matches any run of
//! characters (`/` included), `?` one character, `[abc]` one of a set, `{a,b}` either.
//! Compiled once (globset), so matching on the routing path costs no parsing.

use std::fmt;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list of globs; a text matches when any of them does.
#[derive(Clone)]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

/// Why a glob could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{pattern}` is not a valid glob: {why}")]
pub struct Error {
    pattern: String,
    why: String,
}

fn glob(pattern: &str) -> Result<Glob, Error> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| Error {
            pattern: pattern.to_owned(),
            why: e.kind().to_string(),
        })
}

impl Globs {
    /// Compiles `patterns`; the first invalid one is the error.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Globs, Error> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            builder.add(glob(p.as_ref())?);
        }
        Ok(Globs {
            patterns: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            set: builder.build().map_err(|e| Error {
                pattern: patterns
                    .iter()
                    .map(|p| p.as_ref())
                    .collect::<Vec<_>>()
                    .join(", "),
                why: e.to_string(),
            })?,
        })
    }

    /// `["*"]`: everything.
    pub fn any() -> Globs {
        Globs::new(&["*"]).expect("`*` is a valid glob")
    }

    /// Globs from a peer (an agent's Info or etcd record): invalid patterns are dropped, so
    /// they match nothing rather than everything.
    pub fn lenient<S: AsRef<str>>(patterns: &[S]) -> Globs {
        let valid: Vec<&str> = patterns
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| glob(p).is_ok())
            .collect();
        Globs::new(&valid).expect("every pattern was checked")
    }

    /// Whether any glob matches `text` whole.
    pub fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the list is `["*"]` (or holds `*`): every name matches.
    pub fn matches_everything(&self) -> bool {
        self.patterns.iter().any(|p| p == "*")
    }
}

impl PartialEq for Globs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl fmt::Debug for Globs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.patterns.fmt(f)
    }
}

impl fmt::Display for Globs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.patterns.join(", "))
    }
}

impl<'de> Deserialize<'de> for Globs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let patterns = Vec::<String>::deserialize(d)?;
        Globs::new(&patterns).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Globs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.patterns.serialize(s)
    }
}

impl JsonSchema for Globs {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Globs".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "array",
            "items": {"type": "string"},
            "description": "globs: `*` any run of characters, `?` one character, `[abc]` one of a set, `{a,b}` either"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        Globs::new(&[pattern]).unwrap().is_match(text)
    }

    #[test]
    fn globs_match_like_shell_globs() {
        assert!(m("*", "anything"));
        assert!(m("build-*", "build-linux"));
        assert!(!m("build-*", "deploy"));
        assert!(m("a?c", "abc"));
        assert!(m("*lint*", "py-lint-fast"));
        assert!(!m("", "x"));
        assert!(m("", ""));
        // Images have slashes and tags: `*` crosses them.
        assert!(m("localhost/tools:*", "localhost/tools:1.2"));
        assert!(m("localhost/*", "localhost/a/b:1"));
        assert!(!m("localhost/tools:*", "docker.io/evil:latest"));
        assert!(m("{deploy,build}-*", "build-x"));
    }

    #[test]
    fn a_match_is_of_the_whole_text() {
        assert!(!m("ls", "ls-all"));
        assert!(!m("ls", "xls"));
    }

    #[test]
    fn an_invalid_glob_is_an_error_naming_it() {
        let err = Globs::new(&["ok", "[unclosed"]).unwrap_err().to_string();
        assert!(err.contains("`[unclosed`"), "{err}");
        let lenient = Globs::lenient(&["[unclosed", "b*"]);
        assert!(lenient.is_match("bee") && !lenient.is_match("[unclosed"));
        assert!(!Globs::lenient(&["[unclosed"]).is_match("x"));
    }

    #[test]
    fn globs_read_from_yaml_lists() {
        let g: Globs = serde_json::from_str(r#"["a*", "b"]"#).unwrap();
        assert!(g.is_match("abc") && g.is_match("b") && !g.is_match("c"));
        assert!(serde_json::from_str::<Globs>(r#"["[x"]"#).is_err());
        assert_eq!(serde_json::to_string(&g).unwrap(), r#"["a*","b"]"#);
    }
}
