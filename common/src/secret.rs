//! Secret references in config values: `${env:NAME}` (from the process's environment) and
//! `${file:PATH}` (a file's contents, one trailing newline dropped). Errors name the
//! reference, never a value; [`Secret`] keeps a resolved value out of `Debug` output.

use std::collections::HashMap;
use std::fmt;

/// Resolves `${env:NAME}` and `${file:PATH}` inside `value`. Returns the value and whether it
/// held a secret. Errors name the reference, never a value.
pub fn resolve(value: &str, env: &HashMap<String, String>) -> Result<(String, bool), String> {
    let mut out = String::new();
    let mut secret = false;
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let (kind, body) = if let Some(b) = after.strip_prefix("env:") {
            ("env", b)
        } else if let Some(b) = after.strip_prefix("file:") {
            ("file", b)
        } else {
            out.push_str(&rest[..start + 2]);
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("`${{{kind}:` is not closed with `}}`"))?;
        let reference = &body[..end];
        out.push_str(&rest[..start]);
        match kind {
            "env" => match env.get(reference) {
                Some(v) => out.push_str(v),
                None => {
                    return Err(format!(
                        "`${{env:{reference}}}`: {reference} is not set in this process's environment"
                    ));
                }
            },
            _ => match std::fs::read_to_string(reference) {
                Ok(v) => out.push_str(v.strip_suffix('\n').unwrap_or(&v)),
                Err(e) => {
                    return Err(format!(
                        "`${{file:{reference}}}`: cannot read the file: {e}"
                    ));
                }
            },
        }
        secret = true;
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok((out, secret))
}

/// A resolved secret value: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a resolved value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_errors_name_only_the_reference() {
        let env = HashMap::from([("T".to_owned(), "hunter2".to_owned())]);
        assert_eq!(resolve("a${env:T}b", &env), Ok(("ahunter2b".into(), true)));
        assert_eq!(resolve("plain", &env), Ok(("plain".into(), false)));
        let err = resolve("${env:MISSING}", &env).unwrap_err();
        assert!(err.contains("MISSING") && !err.contains("hunter2"), "{err}");
        assert_eq!(format!("{:?}", Secret::new("hunter2".into())), "***");
    }
}
