//! Tool parameters: their JSON Schema (the tool's `inputSchema`) and the check every call's
//! arguments pass before anything runs.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value, json};

use super::{Param, ParamType, StringRules};

/// A parameter ready to check arguments: its rules with the regexes compiled.
#[derive(Debug, Clone)]
pub struct CompiledParam {
    /// The parameter's name, as arguments and placeholders use it.
    pub name: String,
    /// Its rules as written in the config.
    pub spec: Param,
    /// `pattern`, compiled (string parameters).
    pub pattern: Option<Regex>,
    /// `items.pattern`, compiled (array parameters).
    pub item_pattern: Option<Regex>,
    /// Whether the parameter begins an argv element with no `--` before it in the command
    /// ([`super::template::option_positions`]): then a value starting with `-` is refused
    /// unless `allow_options`.
    pub option_position: bool,
}

impl CompiledParam {
    /// Whether a call must give this parameter.
    pub fn required(&self) -> bool {
        self.spec.required.unwrap_or(self.spec.default.is_none())
    }
}

/// One way an argument broke its parameter's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The parameter (or unknown argument) at fault.
    pub param: String,
    /// What is wrong, as a phrase after "parameter `x`: ".
    pub rule: String,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "parameter `{}`: {}", self.param, self.rule)
    }
}

/// The `inputSchema` of a tool: every parameter, `additionalProperties: false`.
pub fn input_schema(params: &[CompiledParam]) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for p in params {
        properties.insert(p.name.clone(), Value::Object(param_schema(&p.spec)));
        if p.required() {
            required.push(Value::String(p.name.clone()));
        }
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    schema.insert("additionalProperties".into(), json!(false));
    schema
}

fn string_rules_schema(rules: &StringRules, out: &mut Map<String, Value>) {
    if let Some(p) = &rules.pattern {
        out.insert("pattern".into(), json!(p));
    }
    if let Some(n) = rules.min_length {
        out.insert("minLength".into(), json!(n));
    }
    if let Some(n) = rules.max_length {
        out.insert("maxLength".into(), json!(n));
    }
    if let Some(e) = &rules.choices {
        out.insert("enum".into(), json!(e));
    }
}

fn param_schema(p: &Param) -> Map<String, Value> {
    let mut s = Map::new();
    let type_name = match p.kind {
        ParamType::String | ParamType::Path => "string",
        ParamType::Integer => "integer",
        ParamType::Number => "number",
        ParamType::Boolean => "boolean",
        ParamType::Array => "array",
    };
    s.insert("type".into(), json!(type_name));
    match (&p.description, &p.within) {
        (Some(d), Some(within)) if p.kind == ParamType::Path => {
            s.insert(
                "description".into(),
                json!(format!("{d} (a path inside {})", within.display())),
            );
        }
        (None, Some(within)) if p.kind == ParamType::Path => {
            s.insert(
                "description".into(),
                json!(format!("a path inside {}", within.display())),
            );
        }
        (Some(d), _) => {
            s.insert("description".into(), json!(d));
        }
        (None, _) => {}
    }
    string_rules_schema(&p.string_rules(), &mut s);
    if let Some(n) = p.minimum {
        s.insert("minimum".into(), json!(n));
    }
    if let Some(n) = p.maximum {
        s.insert("maximum".into(), json!(n));
    }
    if p.kind == ParamType::Array {
        let mut items = Map::new();
        items.insert("type".into(), json!("string"));
        if let Some(rules) = &p.items {
            string_rules_schema(rules, &mut items);
        }
        s.insert("items".into(), Value::Object(items));
        if let Some(n) = p.min_items {
            s.insert("minItems".into(), json!(n));
        }
        if let Some(n) = p.max_items {
            s.insert("maxItems".into(), json!(n));
        }
    }
    if let Some(d) = &p.default {
        s.insert("default".into(), d.clone());
    }
    s
}

/// Checks a call's arguments. On success returns every given or defaulted value by name.
pub fn check_args(
    params: &[CompiledParam],
    args: Option<&Map<String, Value>>,
) -> Result<BTreeMap<String, Value>, Vec<ArgError>> {
    let empty = Map::new();
    let args = args.unwrap_or(&empty);
    let mut errors = Vec::new();
    for name in args.keys() {
        if !params.iter().any(|p| &p.name == name) {
            let known: Vec<_> = params.iter().map(|p| p.name.as_str()).collect();
            errors.push(ArgError {
                param: name.clone(),
                rule: if known.is_empty() {
                    "unknown parameter (this tool takes none)".into()
                } else {
                    format!("unknown parameter (known: {})", known.join(", "))
                },
            });
        }
    }
    let mut values = BTreeMap::new();
    for p in params {
        let value = match args.get(&p.name) {
            Some(Value::Null) | None => match &p.spec.default {
                Some(d) => d.clone(),
                None if p.required() => {
                    errors.push(ArgError {
                        param: p.name.clone(),
                        rule: "is required".into(),
                    });
                    continue;
                }
                None => continue,
            },
            Some(v) => v.clone(),
        };
        match check_value(p, &value) {
            Ok(v) => {
                values.insert(p.name.clone(), v);
            }
            Err(rule) => errors.push(ArgError {
                param: p.name.clone(),
                rule,
            }),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks one value against its parameter; returns it in canonical form.
pub fn check_value(p: &CompiledParam, v: &Value) -> Result<Value, String> {
    let spec = &p.spec;
    match spec.kind {
        ParamType::String => {
            let Value::String(s) = v else {
                return Err(format!("must be a string, got {}", type_of(v)));
            };
            check_string(s, &spec.string_rules(), p.pattern.as_ref())?;
            check_safety(s, p)?;
            Ok(v.clone())
        }
        ParamType::Path => {
            let Value::String(s) = v else {
                return Err(format!("must be a path (a string), got {}", type_of(v)));
            };
            if s.is_empty() {
                return Err("must not be empty".into());
            }
            // Checked here as given; where it resolves, on the host that runs the call
            // (`super::paths::resolve`).
            check_string(s, &spec.string_rules(), p.pattern.as_ref())?;
            check_safety(s, p)?;
            Ok(v.clone())
        }
        ParamType::Boolean => match v {
            Value::Bool(_) => Ok(v.clone()),
            _ => Err(format!("must be true or false, got {}", type_of(v))),
        },
        ParamType::Integer => {
            let n = integer(v)?;
            check_integer_range(n, spec)?;
            if let Some(choices) = &spec.choices
                && !choices.iter().any(|c| c.as_i64() == Some(n))
            {
                return Err(format!("must be one of {}", list(choices)));
            }
            Ok(Value::from(n))
        }
        ParamType::Number => {
            let Some(n) = v.as_f64().filter(|f| f.is_finite()) else {
                return Err(format!("must be a number, got {}", type_of(v)));
            };
            check_range(n, spec)?;
            Ok(v.clone())
        }
        ParamType::Array => {
            let Value::Array(items) = v else {
                return Err(format!("must be an array of strings, got {}", type_of(v)));
            };
            if let Some(min) = spec.min_items
                && (items.len() as u64) < min
            {
                return Err(format!(
                    "must have at least {min} items (got {})",
                    items.len()
                ));
            }
            if let Some(max) = spec.max_items
                && items.len() as u64 > max
            {
                return Err(format!(
                    "must have at most {max} items (got {})",
                    items.len()
                ));
            }
            let rules = spec.items.clone().unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                let Value::String(s) = item else {
                    return Err(format!("item {i} must be a string, got {}", type_of(item)));
                };
                check_string(s, &rules, p.item_pattern.as_ref())
                    .and_then(|()| check_safety(s, p))
                    .map_err(|e| format!("item {i} {e}"))?;
            }
            Ok(v.clone())
        }
    }
}

/// Unicode's bidirectional control characters: they make text display in another order
/// than it is (the "Trojan Source" trick).
const BIDI_CONTROLS: &[char] = &[
    '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];

/// The rules no pattern has to spell out: no value the program could read as an option
/// where it begins an argument without `--` before it, and no bidirectional controls.
fn check_safety(s: &str, p: &CompiledParam) -> Result<(), String> {
    if p.option_position && !p.spec.allow_options && s.starts_with('-') {
        return Err("must not start with `-` (the program could read it as an option)".into());
    }
    if !p.spec.allow_bidi
        && let Some(c) = s.chars().find(|c| BIDI_CONTROLS.contains(c))
    {
        return Err(format!(
            "must not contain the bidirectional control character U+{:04X} (it makes text display in another order than it is)",
            c as u32
        ));
    }
    Ok(())
}

/// 2^53: below it in magnitude every whole `f64` is exactly one integer.
const F64_EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;
/// 2^63: the first `f64` past `i64::MAX`, and the magnitude of `i64::MIN`.
const F64_I64_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// An integer argument as an `i64`.
///
/// JSON has one number type. serde_json keeps a literal without a fraction or exponent as an
/// integer when it fits 64 bits (`i64`, or `u64` above `i64::MAX`) and everything else as an
/// `f64`, so `1.0` and `1e3` arrive as floats: like JSON Schema's `integer`, they are accepted
/// when whole, as long as they are small enough (below 2^53) for the float to be exactly the
/// number the client meant. Integers outside `i64` are refused, whichever way they arrive.
/// (serde_json without `float_roundtrip` may read a long float literal one unit in the last
/// place off: `9007199254740991.0` reads as ...990. A client that needs big integers exact
/// sends them without a fraction or exponent; they are then never floats.)
fn integer(v: &Value) -> Result<i64, String> {
    let Value::Number(n) = v else {
        return Err(format!("must be an integer, got {}", type_of(v)));
    };
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    let out_of_range = || {
        format!(
            "must be an integer from {} to {} (64 bits), got {n}, which is outside that range",
            i64::MIN,
            i64::MAX
        )
    };
    if n.is_u64() {
        return Err(out_of_range());
    }
    let f = n
        .as_f64()
        .expect("a number that is neither i64 nor u64 is an f64");
    if f.fract() != 0.0 {
        return Err(format!("must be an integer, got {n}, which has a fraction"));
    }
    if f.abs() < F64_EXACT_INTEGERS {
        return Ok(f as i64);
    }
    // -2^63 - 1 and below also round to this float, so it counts as outside too.
    if f.abs() >= F64_I64_LIMIT {
        return Err(out_of_range());
    }
    Err(format!(
        "must be an integer, got {n}: above 2^53, write it without a fraction or exponent so \
         that it is exact"
    ))
}

fn list(choices: &[Value]) -> String {
    choices
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_string(s: &str, rules: &StringRules, pattern: Option<&Regex>) -> Result<(), String> {
    if s.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    let len = s.chars().count() as u64;
    if let Some(min) = rules.min_length
        && len < min
    {
        return Err(format!(
            "must be at least {min} characters long (got {len})"
        ));
    }
    if let Some(max) = rules.max_length
        && len > max
    {
        return Err(format!("must be at most {max} characters long (got {len})"));
    }
    if let Some(re) = pattern
        && !re.is_match(s)
    {
        return Err(format!("must match the pattern `{}`", re.as_str()));
    }
    if let Some(choices) = &rules.choices
        && !choices.iter().any(|c| c.as_str() == Some(s))
    {
        return Err(format!("must be one of {}", list(choices)));
    }
    Ok(())
}

/// [`check_range`] for an integer, compared exactly: as an `f64` it would be rounded above
/// 2^53, and `maximum: 9007199254740992` would let 9007199254740993 through.
fn check_integer_range(n: i64, spec: &Param) -> Result<(), String> {
    // Float-to-int `as` saturates, so infinite bounds stay unbounded; i128 holds both sides.
    // A NaN bound (`.nan` in YAML) bounds nothing, as in `check_range`.
    if let Some(min) = spec.minimum.filter(|m| !m.is_nan())
        && i128::from(n) < min.ceil() as i128
    {
        return Err(format!("must be at least {min} (got {n})"));
    }
    if let Some(max) = spec.maximum.filter(|m| !m.is_nan())
        && i128::from(n) > max.floor() as i128
    {
        return Err(format!("must be at most {max} (got {n})"));
    }
    Ok(())
}

fn check_range(n: f64, spec: &Param) -> Result<(), String> {
    if let Some(min) = spec.minimum
        && n < min
    {
        return Err(format!("must be at least {min} (got {n})"));
    }
    if let Some(max) = spec.maximum
        && n > max
    {
        return Err(format!("must be at most {max} (got {n})"));
    }
    Ok(())
}

/// Checks one parameter's rules (at path `p`) and compiles them (regexes built): a valid
/// name, each rule on a type that takes it, minimums not above maximums, enum values of the
/// parameter's type, a default that meets the rules. Every problem goes to `problem`.
pub fn compile(
    name: &str,
    spec: &Param,
    p: &str,
    problem: &mut dyn FnMut(String, String),
) -> CompiledParam {
    if !super::template::is_param_name(name) {
        problem(
            p.to_owned(),
            "a parameter name starts with a letter or `_` and has only letters, digits and `_` (at most 64)".into(),
        );
    }
    let compile =
        |pattern: &Option<String>, path: String, problem: &mut dyn FnMut(String, String)| {
            pattern.as_ref().and_then(|re| match Regex::new(re) {
                Ok(r) => Some(r),
                Err(e) => {
                    let e = e.to_string();
                    let why = e.lines().last().unwrap_or(&e).trim().to_owned();
                    problem(path, format!("invalid regex `{re}`: {why}"));
                    None
                }
            })
        };
    let pattern = compile(&spec.pattern, format!("{p}.pattern"), &mut *problem);
    let item_pattern = compile(
        &spec.items.as_ref().and_then(|i| i.pattern.clone()),
        format!("{p}.items.pattern"),
        &mut *problem,
    );
    let is = |kinds: &[ParamType]| kinds.contains(&spec.kind);
    let mut misplaced = |field: &str, present: bool, kinds: &[ParamType], what: &str| {
        if present && !is(kinds) {
            problem(
                format!("{p}.{field}"),
                format!("only {what} parameters take `{field}`"),
            );
        }
    };
    misplaced(
        "pattern",
        spec.pattern.is_some(),
        &[ParamType::String, ParamType::Path],
        "string and path",
    );
    misplaced(
        "min_length",
        spec.min_length.is_some(),
        &[ParamType::String, ParamType::Path],
        "string and path",
    );
    misplaced(
        "max_length",
        spec.max_length.is_some(),
        &[ParamType::String, ParamType::Path],
        "string and path",
    );
    misplaced("within", spec.within.is_some(), &[ParamType::Path], "path");
    misplaced("must_exist", spec.must_exist, &[ParamType::Path], "path");
    misplaced(
        "enum",
        spec.choices.is_some(),
        &[ParamType::String, ParamType::Integer],
        "string and integer",
    );
    misplaced(
        "minimum",
        spec.minimum.is_some(),
        &[ParamType::Integer, ParamType::Number],
        "integer and number",
    );
    misplaced(
        "maximum",
        spec.maximum.is_some(),
        &[ParamType::Integer, ParamType::Number],
        "integer and number",
    );
    misplaced("items", spec.items.is_some(), &[ParamType::Array], "array");
    misplaced(
        "min_items",
        spec.min_items.is_some(),
        &[ParamType::Array],
        "array",
    );
    misplaced(
        "max_items",
        spec.max_items.is_some(),
        &[ParamType::Array],
        "array",
    );
    if spec.kind == ParamType::Path {
        match &spec.within {
            None => problem(
                format!("{p}.within"),
                "a path parameter needs `within`: the directory its values must stay inside".into(),
            ),
            Some(dir) if !dir.is_absolute() => problem(
                format!("{p}.within"),
                format!(
                    "`{}` is relative: `within` must be an absolute directory",
                    dir.display()
                ),
            ),
            Some(_) => {}
        }
    }
    let mut ordered = |field: &str, min: Option<f64>, max: Option<f64>| {
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            problem(
                format!("{p}.{field}"),
                format!("the minimum ({lo}) is above the maximum ({hi})"),
            );
        }
    };
    ordered("maximum", spec.minimum, spec.maximum);
    ordered(
        "max_length",
        spec.min_length.map(|n| n as f64),
        spec.max_length.map(|n| n as f64),
    );
    ordered(
        "max_items",
        spec.min_items.map(|n| n as f64),
        spec.max_items.map(|n| n as f64),
    );
    if let Some(choices) = &spec.choices {
        if choices.is_empty() {
            problem(format!("{p}.enum"), "lists no values".into());
        }
        for (j, c) in choices.iter().enumerate() {
            let ok = match spec.kind {
                ParamType::Integer => c.is_i64(),
                _ => c.is_string(),
            };
            if !ok {
                problem(
                    format!("{p}.enum[{j}]"),
                    format!("{c} is not a value of this parameter's type"),
                );
            }
        }
    }
    if spec.required == Some(true) && spec.default.is_some() {
        problem(
            format!("{p}.required"),
            "a parameter with a default is never missing: drop `required` or the default".into(),
        );
    }
    let compiled = CompiledParam {
        name: name.to_owned(),
        spec: spec.clone(),
        pattern,
        item_pattern,
        option_position: false,
    };
    if let Some(d) = &spec.default
        && let Err(why) = check_value(&compiled, d)
    {
        problem(
            format!("{p}.default"),
            format!("the default {d} is not valid: it {why}"),
        );
    }
    compiled
}

#[cfg(test)]
mod tests;
