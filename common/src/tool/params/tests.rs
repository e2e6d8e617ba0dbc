//! Every rule a parameter can set, checked against the arguments that should pass it and the
//! ones that should not: this is where a call's input meets the command line.

use serde_json::json;

use super::*;

/// A parameter named `p` with `spec` (the YAML `params.p` mapping, as JSON), its regexes
/// compiled the way the catalog does.
fn param(spec: Value) -> CompiledParam {
    named("p", spec)
}

fn named(name: &str, spec: Value) -> CompiledParam {
    let spec: Param = serde_json::from_value(spec).expect("a well-formed parameter");
    let compile = |re: Option<&String>| re.map(|re| Regex::new(re).expect("a valid regex"));
    CompiledParam {
        name: name.to_owned(),
        pattern: compile(spec.pattern.as_ref()),
        item_pattern: compile(spec.items.as_ref().and_then(|i| i.pattern.as_ref())),
        option_position: false,
        spec,
    }
}

/// A JSON value exactly as serde_json reads it off the wire: `1.0` is a float,
/// `9223372036854775808` a u64, and so on.
fn wire(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

/// The refusal `check_value` gives, or a panic naming the accepted value.
fn refusal(p: &CompiledParam, v: &Value) -> String {
    match check_value(p, v) {
        Ok(ok) => panic!("{v} was accepted (as {ok}) by {:?}", p.spec),
        Err(e) => e,
    }
}

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(map) => map,
        other => panic!("arguments must be an object, got {other}"),
    }
}

/// The one place the tests go through the config file: parse and check `yaml`.

// --- strings ---

#[test]
fn a_string_parameter_refuses_every_other_type() {
    let p = param(json!({"type": "string"}));
    assert_eq!(check_value(&p, &json!("x; $(id)")), Ok(json!("x; $(id)")));
    for (v, got) in [
        (json!(1), "an integer"),
        (json!(1.5), "a number"),
        (json!(true), "a boolean"),
        (json!(["a"]), "an array"),
        (json!({"a": 1}), "an object"),
        (json!(null), "null"),
    ] {
        assert_eq!(refusal(&p, &v), format!("must be a string, got {got}"));
    }
}

#[test]
fn string_length_counts_characters_not_bytes() {
    let p = param(json!({"type": "string", "min_length": 2, "max_length": 3}));
    assert_eq!(
        refusal(&p, &json!("é")),
        "must be at least 2 characters long (got 1)"
    );
    assert!(check_value(&p, &json!("éé")).is_ok());
    assert!(
        check_value(&p, &json!("日本語")).is_ok(),
        "9 bytes, 3 characters"
    );
    assert_eq!(
        refusal(&p, &json!("abcd")),
        "must be at most 3 characters long (got 4)"
    );
    assert_eq!(
        refusal(&p, &json!("")),
        "must be at least 2 characters long (got 0)"
    );
}

#[test]
fn a_pattern_matches_anywhere_in_the_value_unless_anchored() {
    let loose = param(json!({"type": "string", "pattern": "[0-9]"}));
    assert!(check_value(&loose, &json!("a1; rm -rf /")).is_ok());
    assert_eq!(
        refusal(&loose, &json!("abc")),
        "must match the pattern `[0-9]`"
    );

    let anchored = param(json!({"type": "string", "pattern": "^[a-z]+$"}));
    assert!(check_value(&anchored, &json!("abc")).is_ok());
    assert_eq!(
        refusal(&anchored, &json!("abc; id")),
        "must match the pattern `^[a-z]+$`"
    );
}

#[test]
fn an_anchored_pattern_refuses_a_trailing_newline() {
    // In PCRE and Python, `$` also matches before a final newline; in Rust's regex it does
    // not, so "abc\n" cannot slip a line break past `^[a-z]+$`.
    let p = param(json!({"type": "string", "pattern": "^[a-z]+$"}));
    assert_eq!(
        refusal(&p, &json!("abc\n")),
        "must match the pattern `^[a-z]+$`"
    );
    assert_eq!(
        refusal(&p, &json!("abc\ndef")),
        "must match the pattern `^[a-z]+$`"
    );
}

#[test]
fn a_nul_character_is_refused_in_any_string() {
    // No argv element can hold a NUL: refuse it rather than cut the argument short.
    let p = param(json!({"type": "string"}));
    assert_eq!(
        refusal(&p, &json!("a\u{0}b")),
        "must not contain a NUL character"
    );
}

#[test]
fn a_string_enum_accepts_only_its_values() {
    let p = param(json!({"type": "string", "enum": ["syslog", "auth.log"]}));
    assert!(check_value(&p, &json!("auth.log")).is_ok());
    assert_eq!(
        refusal(&p, &json!("../../etc/shadow")),
        r#"must be one of "syslog", "auth.log""#
    );
    assert_eq!(
        refusal(&p, &json!("Syslog")),
        r#"must be one of "syslog", "auth.log""#
    );
}

// --- booleans ---

#[test]
fn a_boolean_parameter_takes_only_true_or_false() {
    let p = param(json!({"type": "boolean"}));
    assert_eq!(check_value(&p, &json!(true)), Ok(json!(true)));
    assert_eq!(check_value(&p, &json!(false)), Ok(json!(false)));
    assert_eq!(
        refusal(&p, &json!("true")),
        "must be true or false, got a string"
    );
    assert_eq!(
        refusal(&p, &json!(1)),
        "must be true or false, got an integer"
    );
    assert_eq!(refusal(&p, &json!(null)), "must be true or false, got null");
}

// --- integers ---

#[test]
fn an_integer_parameter_takes_the_whole_i64_range() {
    let p = param(json!({"type": "integer"}));
    for text in [
        "0",
        "-1",
        "42",
        "9223372036854775807",
        "-9223372036854775808",
    ] {
        let v = wire(text);
        assert_eq!(check_value(&p, &v), Ok(v.clone()), "{text}");
    }
}

#[test]
fn an_integer_written_as_a_string_is_refused() {
    let p = param(json!({"type": "integer"}));
    assert_eq!(refusal(&p, &json!("5")), "must be an integer, got a string");
    assert_eq!(
        refusal(&p, &json!(true)),
        "must be an integer, got a boolean"
    );
}

#[test]
fn an_integer_with_a_fraction_is_refused_naming_the_fraction() {
    let p = param(json!({"type": "integer"}));
    assert_eq!(
        refusal(&p, &wire("1.5")),
        "must be an integer, got 1.5, which has a fraction"
    );
    assert_eq!(
        refusal(&p, &wire("-0.25")),
        "must be an integer, got -0.25, which has a fraction"
    );
}

#[test]
fn a_whole_float_such_as_1_0_is_the_integer_1_because_json_has_one_number_type() {
    // serde_json reads `1.0` and `1e3` as f64; JSON Schema's `integer` accepts them, and so
    // do we. The value comes back as a JSON integer, so the command gets `1`, never `1.0`.
    let p = param(json!({"type": "integer"}));
    for (text, want) in [("1.0", 1), ("1e3", 1000), ("-0.0", 0), ("-7.0", -7)] {
        let v = wire(text);
        assert!(v.is_f64(), "serde_json reads {text} as a float");
        let got = check_value(&p, &v).unwrap();
        assert!(got.is_i64(), "{text} comes back as an integer, not {got}");
        assert_eq!(got, json!(want), "{text}");
    }
    let large_but_exact = wire("123456789012345.0");
    assert_eq!(
        check_value(&p, &large_but_exact),
        Ok(json!(123_456_789_012_345_i64))
    );
}

#[test]
fn two_to_the_63_is_refused_as_outside_the_64_bit_range() {
    let p = param(json!({"type": "integer"}));
    let v = wire("9223372036854775808");
    assert!(v.is_u64(), "serde_json reads i64::MAX + 1 as a u64");
    let e = refusal(&p, &v);
    assert_eq!(
        e,
        "must be an integer from -9223372036854775808 to 9223372036854775807 (64 bits), \
         got 9223372036854775808, which is outside that range"
    );
    let e = refusal(&p, &wire("18446744073709551615"));
    assert!(e.contains("which is outside that range"), "u64::MAX: {e}");
}

#[test]
fn two_to_the_64_is_refused_as_outside_the_64_bit_range() {
    let p = param(json!({"type": "integer"}));
    let v = wire("18446744073709551616");
    assert!(v.is_f64(), "serde_json reads u64::MAX + 1 as a float");
    let e = refusal(&p, &v);
    assert!(e.contains("(64 bits), got 1.8446744073709552e+19"), "{e}");
    assert!(e.ends_with("which is outside that range"), "{e}");
    let e = refusal(&p, &wire("1e300"));
    assert!(e.ends_with("which is outside that range"), "{e}");
}

#[test]
fn below_i64_min_is_refused_as_outside_the_64_bit_range() {
    // -2^63 - 1 arrives as a float, rounded to exactly -2^63 (= i64::MIN): refusing it is the
    // only way not to run the command with a number the client did not send.
    let p = param(json!({"type": "integer"}));
    let v = wire("-9223372036854775809");
    assert!(v.is_f64(), "serde_json reads i64::MIN - 1 as a float");
    let e = refusal(&p, &v);
    assert!(e.ends_with("which is outside that range"), "{e}");
    assert!(
        !e.contains("got an integer") && !e.contains("got a number"),
        "{e}"
    );
}

#[test]
fn a_whole_float_above_2_pow_53_is_refused_as_possibly_not_the_number_sent() {
    // 9007199254740993.0 reads as 9007199254740992.0: as a float it cannot be told apart from
    // its neighbour. Written as a plain integer it is exact, and accepted.
    let p = param(json!({"type": "integer"}));
    for text in ["9007199254740993.0", "9007199254740992.0", "1e16", "-1e18"] {
        let e = refusal(&p, &wire(text));
        assert!(e.contains("without a fraction or exponent"), "{text}: {e}");
    }
    assert_eq!(
        check_value(&p, &wire("9007199254740993")),
        Ok(json!(9_007_199_254_740_993_i64))
    );
}

#[test]
fn integer_minimum_and_maximum_are_inclusive() {
    let p = param(json!({"type": "integer", "minimum": 1, "maximum": 10}));
    assert_eq!(check_value(&p, &json!(1)), Ok(json!(1)));
    assert_eq!(check_value(&p, &json!(10)), Ok(json!(10)));
    assert_eq!(refusal(&p, &json!(0)), "must be at least 1 (got 0)");
    assert_eq!(refusal(&p, &json!(11)), "must be at most 10 (got 11)");
    assert_eq!(
        refusal(&p, &json!(i64::MIN)),
        "must be at least 1 (got -9223372036854775808)"
    );
}

#[test]
fn integer_bounds_are_compared_exactly_above_2_pow_53() {
    // As f64, 2^53 + 1 rounds to 2^53 and would pass `maximum: 2^53`.
    let p = param(json!({
        "type": "integer",
        "minimum": -9_007_199_254_740_992_i64,
        "maximum": 9_007_199_254_740_992_i64
    }));
    assert!(check_value(&p, &json!(9_007_199_254_740_992_i64)).is_ok());
    assert_eq!(
        refusal(&p, &json!(9_007_199_254_740_993_i64)),
        "must be at most 9007199254740992 (got 9007199254740993)"
    );
    assert_eq!(
        refusal(&p, &json!(-9_007_199_254_740_993_i64)),
        "must be at least -9007199254740992 (got -9007199254740993)"
    );
}

#[test]
fn fractional_bounds_on_an_integer_admit_only_the_integers_between_them() {
    let p = param(json!({"type": "integer", "minimum": 0.5, "maximum": 2.5}));
    assert_eq!(refusal(&p, &json!(0)), "must be at least 0.5 (got 0)");
    assert!(check_value(&p, &json!(1)).is_ok());
    assert!(check_value(&p, &json!(2)).is_ok());
    assert_eq!(refusal(&p, &json!(3)), "must be at most 2.5 (got 3)");
}

#[test]
fn an_integer_enum_accepts_only_its_values() {
    let p = param(json!({"type": "integer", "enum": [1, 2, 3]}));
    assert_eq!(check_value(&p, &json!(2)), Ok(json!(2)));
    assert_eq!(check_value(&p, &wire("2.0")), Ok(json!(2)));
    assert_eq!(refusal(&p, &json!(4)), "must be one of 1, 2, 3");
    assert_eq!(refusal(&p, &json!("2")), "must be an integer, got a string");
}

// --- numbers ---

#[test]
fn a_number_parameter_takes_integers_and_fractions_unchanged() {
    let p = param(json!({"type": "number"}));
    for text in ["1.5", "2", "-0.001", "1e300", "18446744073709551616"] {
        let v = wire(text);
        assert_eq!(check_value(&p, &v), Ok(v.clone()), "{text}");
    }
}

#[test]
fn a_number_parameter_refuses_strings_and_booleans() {
    let p = param(json!({"type": "number"}));
    assert_eq!(refusal(&p, &json!("1.5")), "must be a number, got a string");
    assert_eq!(
        refusal(&p, &json!(false)),
        "must be a number, got a boolean"
    );
    assert_eq!(refusal(&p, &json!([1])), "must be a number, got an array");
}

#[test]
fn number_minimum_and_maximum_are_inclusive() {
    let p = param(json!({"type": "number", "minimum": -1.5, "maximum": 1.5}));
    assert!(check_value(&p, &json!(-1.5)).is_ok());
    assert!(check_value(&p, &json!(1.5)).is_ok());
    assert!(check_value(&p, &json!(0)).is_ok());
    assert_eq!(
        refusal(&p, &json!(-1.51)),
        "must be at least -1.5 (got -1.51)"
    );
    assert_eq!(refusal(&p, &json!(2)), "must be at most 1.5 (got 2)");
}

// --- arrays ---

#[test]
fn an_array_parameter_takes_arrays_of_strings_only() {
    let p = param(json!({"type": "array"}));
    assert_eq!(check_value(&p, &json!(["a", "b"])), Ok(json!(["a", "b"])));
    assert_eq!(check_value(&p, &json!([])), Ok(json!([])));
    assert_eq!(
        refusal(&p, &json!("a")),
        "must be an array of strings, got a string"
    );
    assert_eq!(
        refusal(&p, &json!(["a", 1])),
        "item 1 must be a string, got an integer"
    );
    assert_eq!(
        refusal(&p, &json!([["nested"]])),
        "item 0 must be a string, got an array"
    );
    assert_eq!(
        refusal(&p, &json!(["ok", "a\u{0}b"])),
        "item 1 must not contain a NUL character"
    );
}

#[test]
fn array_items_follow_their_own_string_rules() {
    let p = param(json!({
        "type": "array",
        "items": {"pattern": "^[a-z]+$", "min_length": 2, "max_length": 3}
    }));
    assert!(check_value(&p, &json!(["ab", "xyz"])).is_ok());
    assert_eq!(
        refusal(&p, &json!(["ab", "-rf"])),
        "item 1 must match the pattern `^[a-z]+$`"
    );
    assert_eq!(
        refusal(&p, &json!(["abcd"])),
        "item 0 must be at most 3 characters long (got 4)"
    );
    assert_eq!(
        refusal(&p, &json!(["ab", "a"])),
        "item 1 must be at least 2 characters long (got 1)"
    );
}

#[test]
fn an_array_item_enum_accepts_only_its_values() {
    let p = param(json!({"type": "array", "items": {"enum": ["-l", "-a"]}}));
    assert!(check_value(&p, &json!(["-a", "-l", "-a"])).is_ok());
    assert_eq!(
        refusal(&p, &json!(["-l", "--exec"])),
        r#"item 1 must be one of "-l", "-a""#
    );
}

#[test]
fn array_length_is_bounded_by_min_items_and_max_items() {
    let p = param(json!({"type": "array", "min_items": 1, "max_items": 2}));
    assert_eq!(
        refusal(&p, &json!([])),
        "must have at least 1 items (got 0)"
    );
    assert!(check_value(&p, &json!(["a"])).is_ok());
    assert!(check_value(&p, &json!(["a", "b"])).is_ok());
    assert_eq!(
        refusal(&p, &json!(["a", "b", "c"])),
        "must have at most 2 items (got 3)"
    );
}

// --- whole argument sets ---

#[test]
fn an_unknown_argument_is_refused_and_the_known_ones_are_named() {
    let params = [
        named("path", json!({"type": "string"})),
        named("depth", json!({"type": "integer", "default": 1})),
    ];
    let errors = check_args(
        &params,
        Some(&args(json!({"path": "/tmp", "--exec": "id"}))),
    )
    .unwrap_err();
    assert_eq!(
        errors,
        [ArgError {
            param: "--exec".into(),
            rule: "unknown parameter (known: path, depth)".into(),
        }]
    );
    assert_eq!(
        errors[0].to_string(),
        "parameter `--exec`: unknown parameter (known: path, depth)"
    );
}

#[test]
fn a_tool_without_parameters_refuses_any_argument() {
    assert_eq!(check_args(&[], None), Ok(BTreeMap::new()));
    assert_eq!(check_args(&[], Some(&Map::new())), Ok(BTreeMap::new()));
    let errors = check_args(&[], Some(&args(json!({"x": 1})))).unwrap_err();
    assert_eq!(errors[0].rule, "unknown parameter (this tool takes none)");
}

#[test]
fn a_missing_required_argument_is_reported() {
    let params = [named("path", json!({"type": "string"}))];
    let missing = [ArgError {
        param: "path".into(),
        rule: "is required".into(),
    }];
    assert_eq!(check_args(&params, None).unwrap_err(), missing);
    assert_eq!(check_args(&params, Some(&Map::new())).unwrap_err(), missing);
}

#[test]
fn null_counts_as_a_missing_argument() {
    let params = [
        named("required", json!({"type": "string"})),
        named("defaulted", json!({"type": "integer", "default": 3})),
        named("optional", json!({"type": "string", "required": false})),
    ];
    let all_null = args(json!({"required": null, "defaulted": null, "optional": null}));
    assert_eq!(
        check_args(&params, Some(&all_null)).unwrap_err(),
        [ArgError {
            param: "required".into(),
            rule: "is required".into(),
        }]
    );
    let given = args(json!({"required": "x", "defaulted": null, "optional": null}));
    let values = check_args(&params, Some(&given)).unwrap();
    assert_eq!(
        values,
        BTreeMap::from([
            ("required".to_owned(), json!("x")),
            ("defaulted".to_owned(), json!(3)),
        ])
    );
}

#[test]
fn a_default_fills_in_a_missing_argument_and_a_given_one_wins() {
    let params = [named("depth", json!({"type": "integer", "default": 2}))];
    assert_eq!(
        check_args(&params, None),
        Ok(BTreeMap::from([("depth".to_owned(), json!(2))]))
    );
    assert_eq!(
        check_args(&params, Some(&args(json!({"depth": 5})))),
        Ok(BTreeMap::from([("depth".to_owned(), json!(5))]))
    );
    assert!(!params[0].required());
}

#[test]
fn an_optional_argument_without_a_default_is_left_out() {
    let params = [named(
        "filter",
        json!({"type": "string", "required": false}),
    )];
    assert!(!params[0].required());
    assert_eq!(check_args(&params, None), Ok(BTreeMap::new()));
}

#[test]
fn every_broken_rule_is_reported_at_once() {
    let params = [
        named("name", json!({"type": "string", "max_length": 3})),
        named("count", json!({"type": "integer", "maximum": 5})),
        named("flag", json!({"type": "boolean"})),
    ];
    let errors = check_args(
        &params,
        Some(&args(json!({"name": "toolong", "count": 6, "extra": 1}))),
    )
    .unwrap_err();
    let shown: Vec<_> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "parameter `extra`: unknown parameter (known: name, count, flag)",
            "parameter `name`: must be at most 3 characters long (got 7)",
            "parameter `count`: must be at most 5 (got 6)",
            "parameter `flag`: is required",
        ]
    );
}

#[test]
fn checked_arguments_come_back_in_canonical_form() {
    let params = [named("n", json!({"type": "integer"}))];
    let values = check_args(&params, Some(&args(json!({"n": wire("3.0")})))).unwrap();
    assert!(values["n"].is_i64(), "{}", values["n"]);
    assert_eq!(values["n"], json!(3));
}

#[test]
fn the_input_schema_refuses_additional_properties_and_lists_what_is_required() {
    let params = [
        named("path", json!({"type": "string", "pattern": "^/"})),
        named(
            "depth",
            json!({"type": "integer", "default": 1, "minimum": 0}),
        ),
        named("opt", json!({"type": "string", "required": false})),
        named(
            "names",
            json!({"type": "array", "items": {"max_length": 8}, "max_items": 4}),
        ),
    ];
    assert_eq!(
        Value::Object(input_schema(&params)),
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "pattern": "^/"},
                "depth": {"type": "integer", "minimum": 0.0, "default": 1},
                "opt": {"type": "string"},
                "names": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4}
            },
            "required": ["path", "names"],
            "additionalProperties": false
        })
    );
    assert_eq!(
        Value::Object(input_schema(&[])),
        json!({"type": "object", "properties": {}, "additionalProperties": false})
    );
}

// --- what no pattern has to say ---

/// The params of `command` (JSON) with `p` declared as `spec`, marked as the catalog marks
/// them.
fn in_command(command: &str, spec: Value) -> CompiledParam {
    let command: Vec<crate::tool::CommandElement> =
        serde_json::from_str(command).expect("a command");
    let mut declared = indexmap::IndexMap::new();
    declared.insert(
        "p".to_owned(),
        serde_json::from_value(spec.clone()).unwrap(),
    );
    let compiled = crate::tool::template::compile(&command, &declared, "t", &mut |path, e| {
        panic!("{path}: {e}")
    });
    let mut params = vec![named("p", spec)];
    crate::tool::template::mark_option_positions(&compiled, &mut params);
    params.pop().unwrap()
}

#[test]
fn a_value_starting_with_a_dash_is_refused_where_it_begins_an_argument_before_any_double_dash() {
    let string = json!({"type": "string"});
    let injected = json!("--upload-pack=touch /tmp/x; echo");
    for command in [
        r#"["git", "ls-remote", "{{p}}"]"#,
        r#"["git", "{{p}}", "--", "x"]"#,
        r#"["git", {"if": "p", "args": ["--", "{{p}}"]}]"#,
    ] {
        let p = in_command(command, string.clone());
        assert!(p.option_position, "{command}");
        assert!(
            refusal(&p, &injected).contains("must not start with `-`"),
            "{command}"
        );
        assert!(check_value(&p, &json!("origin")).is_ok());
    }
    for command in [
        r#"["git", "ls-remote", "--", "{{p}}"]"#,
        r#"["git", "--upload-pack={{p}}"]"#,
        r#"["git", "x{{p}}"]"#,
    ] {
        let p = in_command(command, string.clone());
        assert!(!p.option_position, "{command}");
        assert!(check_value(&p, &injected).is_ok(), "{command}");
    }
    // Array items too; and a parameter that says options are meant takes them.
    let p = in_command(r#"["ls", "{{p}}"]"#, json!({"type": "array"}));
    assert!(refusal(&p, &json!(["a", "-la"])).contains("item 1 must not start with `-`"));
    let p = in_command(
        r#"["ls", "{{p}}"]"#,
        json!({"type": "string", "allow_options": true}),
    );
    assert!(check_value(&p, &json!("-la")).is_ok());
}

#[test]
fn bidirectional_control_characters_are_refused_unless_allowed() {
    let p = param(json!({"type": "string"}));
    for c in ['\u{202E}', '\u{2066}', '\u{200F}', '\u{061C}'] {
        let v = json!(format!("file{c}txt.exe"));
        assert!(
            refusal(&p, &v).contains(&format!("U+{:04X}", c as u32)),
            "{c:?}"
        );
    }
    assert!(
        check_value(&p, &json!("שלום hello")).is_ok(),
        "right-to-left text itself is fine"
    );
    let allowed = param(json!({"type": "string", "allow_bidi": true}));
    assert!(check_value(&allowed, &json!("a\u{202E}b")).is_ok());
    let items = param(json!({"type": "array"}));
    assert!(refusal(&items, &json!(["ok", "x\u{202E}"])).starts_with("item 1 "));
}
