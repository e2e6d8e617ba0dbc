//! `path` parameters: a value that must name something inside a directory.
//!
//! Where a path leads is a fact of the host that runs the call (its files, its symbolic
//! links), not of the coordinator that checked the arguments. So rendering puts a marker in
//! the argv where a path value goes ([`extract`]), the execution carries the values as
//! [`PathArg`]s, and the host that runs the command resolves them ([`resolve`]) and puts the
//! resolved absolute paths in place of the markers ([`substitute`]) just before it starts the
//! command. A marker holds a NUL character, which no checked value can hold, so no argument
//! can forge one, and an argv with a marker left in it cannot be executed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::ParamType;
use super::params::CompiledParam;

/// A path value of a call, still to be resolved on the host that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathArg {
    /// The parameter it was given for.
    pub param: String,
    /// The value as the caller gave it (checked against the parameter's string rules).
    pub value: String,
    /// The directory it must resolve inside.
    pub within: PathBuf,
    /// It must name something that exists.
    pub must_exist: bool,
}

/// What stands in the argv for the path value of `param` until it is resolved.
pub fn marker(param: &str) -> String {
    format!("\0path:{param}\0")
}

/// Takes the values of `params`' path parameters out of `values`, leaving their markers in
/// place, and returns them to be resolved where the call runs.
pub fn extract(params: &[CompiledParam], values: &mut BTreeMap<String, Value>) -> Vec<PathArg> {
    let mut paths = Vec::new();
    for p in params.iter().filter(|p| p.spec.kind == ParamType::Path) {
        let (Some(value), Some(within)) = (values.get_mut(&p.name), &p.spec.within) else {
            continue;
        };
        let Value::String(given) = std::mem::replace(value, Value::String(marker(&p.name))) else {
            unreachable!("a checked path value is a string");
        };
        paths.push(PathArg {
            param: p.name.clone(),
            value: given,
            within: within.clone(),
            must_exist: p.spec.must_exist,
        });
    }
    paths
}

/// Why a path value was refused where the call runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}`: {why}")]
pub struct PathError {
    /// The parameter whose value was refused.
    pub param: String,
    /// What is wrong with it.
    pub why: String,
}

/// Resolves `arg` on this host: relative values are taken from `within`, every symbolic link
/// on the way is followed, `..` goes to the real parent. The result must lie inside `within`
/// (itself resolved) and, with `must_exist`, exist. The error does not say where a link led.
pub fn resolve(arg: &PathArg) -> Result<PathBuf, PathError> {
    let refuse = |why: String| PathError {
        param: arg.param.clone(),
        why,
    };
    let within = &arg.within;
    let root = std::fs::canonicalize(within).map_err(|e| {
        refuse(format!(
            "its directory {} can't be used on this host: {e}",
            within.display()
        ))
    })?;
    if !root.is_dir() {
        return Err(refuse(format!("{} is not a directory", within.display())));
    }
    if arg.value.contains('\0') {
        return Err(refuse("must not contain a NUL character".into()));
    }
    let given = Path::new(&arg.value);
    let start = if given.is_absolute() {
        PathBuf::from("/")
    } else {
        root.clone()
    };
    let outside = || {
        refuse(format!(
            "`{}` leads outside {}",
            arg.value,
            within.display()
        ))
    };
    // `real` is always a canonical path that exists, until `missing` says a part of the
    // value does not exist; what follows is then taken as written, which cannot lead
    // through a link.
    let mut real = start;
    let mut missing = false;
    for part in given.components() {
        match part {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir if missing => {
                return Err(refuse(format!(
                    "`{}` goes up (`..`) from a directory that does not exist",
                    arg.value
                )));
            }
            Component::ParentDir => {
                real.pop();
            }
            Component::Normal(name) => {
                let next = real.join(name);
                if missing {
                    real = next;
                    continue;
                }
                match std::fs::symlink_metadata(&next) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        real = std::fs::canonicalize(&next).map_err(|e| match e.kind() {
                            io::ErrorKind::NotFound => refuse(format!(
                                "`{}` passes through a symbolic link to nothing",
                                arg.value
                            )),
                            _ => refuse(format!("`{}` can't be resolved: {e}", arg.value)),
                        })?;
                    }
                    Ok(_) => real = next,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        missing = true;
                        real = next;
                    }
                    Err(e) => {
                        return Err(refuse(format!("`{}` can't be resolved: {e}", arg.value)));
                    }
                }
            }
        }
    }
    if !real.starts_with(&root) {
        return Err(outside());
    }
    if missing && arg.must_exist {
        return Err(refuse(format!(
            "`{}` does not exist in {}",
            arg.value,
            within.display()
        )));
    }
    Ok(real)
}

/// Resolves every path of a call and puts it in place of its marker in `argv`. Fails when a
/// path is refused, or when a marker is left that no path filled (the argv can't run then).
pub fn substitute(argv: &mut [String], paths: &[PathArg]) -> Result<(), PathError> {
    let mut resolved = Vec::with_capacity(paths.len());
    for arg in paths {
        let real = resolve(arg)?;
        let real = real.into_os_string().into_string().map_err(|_| PathError {
            param: arg.param.clone(),
            why: "resolves to a path that is not UTF-8".into(),
        })?;
        resolved.push((marker(&arg.param), real));
    }
    for (marker, real) in &resolved {
        for element in argv.iter_mut().filter(|e| e.contains(marker.as_str())) {
            *element = element.replace(marker.as_str(), real);
        }
    }
    if let Some(left) = argv.iter().find(|e| e.contains('\0')) {
        let param = left
            .split('\0')
            .nth(1)
            .and_then(|m| m.strip_prefix("path:"))
            .unwrap_or("?");
        return Err(PathError {
            param: param.to_owned(),
            why: "its path value was not sent with the call".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
