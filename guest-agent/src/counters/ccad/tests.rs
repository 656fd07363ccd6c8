use super::*;

const APACHE: &str = include_str!("../../../tests/seed/apache.ccad.conf");
const PLANTS: &str = include_str!("../../../tests/seed/plants.ccad.conf");

fn parse_ok(text: &str) -> Parsed {
    parse(text, Path::new("/etc/ccad.conf"))
        .unwrap_or_else(|e| panic!("{}", appmon_wire::report::error_chain(&e)))
}

fn config(text: &str) -> CcadConfig {
    let parsed = parse_ok(text);
    assert_eq!(parsed.warnings, [], "no warnings expected");
    parsed.config
}

/// The error's text, as the agent logs it.
fn error(text: &str) -> String {
    match parse(text, Path::new("/etc/ccad.conf")) {
        Ok(parsed) => panic!("expected an error, got {parsed:?}"),
        Err(e) => e.to_string(),
    }
}

fn entity_names(block: &Block) -> Vec<&str> {
    block.entities.iter().map(|e| e.name.as_str()).collect()
}

#[test]
fn the_seeds_apache_example_is_one_entity_of_four_counters() {
    let config = config(APACHE);
    assert_eq!(config.blocks.len(), 1);
    let block = &config.blocks[0];
    assert_eq!(block.name.as_str(), "Apache");
    assert_eq!(block.pace_ms, 1000);
    assert_eq!(block.pipe, Path::new("/tmp/cca"));
    assert_eq!(entity_names(block), ["Apache"]);
    let counters = &block.entities[0].counters;
    let got: Vec<(&str, &str, &str, &str, &str)> = counters
        .iter()
        .map(|c| {
            (
                c.key.as_str(),
                c.name.as_str(),
                c.description.as_str(),
                c.units.as_str(),
                c.kind.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "Total_Accesses",
                "Total hits",
                "Total number of hits",
                "#",
                "MAX"
            ),
            (
                "Total_kBytes",
                "Total bytes",
                "Total number of bytes",
                "bytes",
                "MAX"
            ),
            (
                "BusyWorkers",
                "Active requests",
                "Number of active requests",
                "#",
                "MAX"
            ),
            (
                "IdleWorkers",
                "Idle servers",
                "Number of idle servers",
                "#",
                "MAX"
            ),
        ]
    );
    assert_eq!((counters[0].line, counters[0].column), (5, 12));
}

#[test]
fn the_seeds_plants_example_is_three_entities_named_as_the_seed_says() {
    let config = config(PLANTS);
    let block = &config.blocks[0];
    assert_eq!(
        (block.pace_ms, block.pipe.as_path()),
        (2000, Path::new("/my-pipe"))
    );
    assert_eq!(
        entity_names(block),
        ["Plants", "Delicious Fruits!!!", "Vegetables"]
    );
    let keys: Vec<Vec<&str>> = block
        .entities
        .iter()
        .map(|e| e.counters.iter().map(|c| c.key.as_str()).collect())
        .collect();
    assert_eq!(
        keys,
        [
            vec!["tree"],
            vec!["pears", "apples"],
            vec!["potato", "tomato"]
        ]
    );
    let tree = &block.entities[0].counters[0];
    assert_eq!(
        (
            tree.name.as_str(),
            tree.description.as_str(),
            tree.units.as_str()
        ),
        ("tree", "Any tree", "#")
    );
    let potato = &block.entities[2].counters[0];
    assert_eq!(
        (potato.description.as_str(), potato.units.as_str()),
        ("Number of potatoes", "potatoes")
    );
}

#[test]
fn both_examples_in_one_file_are_two_blocks() {
    let config = config(&format!("{APACHE}\n# and the plants\n{PLANTS}"));
    assert_eq!(config.blocks.len(), 2);
    assert_eq!(config.counters().count(), 9);
}

#[test]
fn a_block_without_pace_or_pipe_takes_ccads_defaults() {
    let config = config("counters X { counter a }");
    let block = &config.blocks[0];
    assert_eq!(
        (block.pace_ms, block.pipe.as_path()),
        (1000, Path::new("/tmp/cca"))
    );
    assert_eq!(block.entities[0].counters[0].name.as_str(), "a");
}

#[test]
fn counter_forms_bare_block_and_one_line_all_parse() {
    let text = "counters X\n{\ncounter bare\ncounter braced { units = \"s\", desc = d }\n\
                counter next_line\n   {\n   units = s\n   }\ncounter line: units = s,\n   desc = \"continued\"\ncounter empty:\n}\n";
    let block = &config(text).blocks[0];
    let got: Vec<(&str, &str, &str)> = block.entities[0]
        .counters
        .iter()
        .map(|c| (c.key.as_str(), c.units.as_str(), c.description.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("bare", "", ""),
            ("braced", "s", "d"),
            ("next_line", "s", ""),
            ("line", "s", "continued"),
            ("empty", "", ""),
        ]
    );
}

#[test]
fn strings_take_escapes_and_comments_end_at_the_line() {
    let text = "counters X { # a comment { not a brace\ncounter a: desc = \"say \\\"hi\\\" # not a comment\"\n}";
    let counter = &config(text).blocks[0].entities[0].counters[0];
    assert_eq!(counter.description.as_str(), "say \"hi\" # not a comment");
}

#[test]
fn ranges_are_numbers() {
    let counter = &config("counters X { counter a: range_lower = 0, range_upper = 1e3 }").blocks[0]
        .entities[0]
        .counters[0];
    assert_eq!(
        (counter.range_lower, counter.range_upper),
        (Some(0.0), Some(1000.0))
    );
    assert!(error("counters X { counter a: range_upper = lots }").contains("is not a number"));
}

#[test]
fn a_block_with_only_groups_has_no_entity_of_its_own() {
    let block = &config("counters X { group G { counter a } }").blocks[0];
    assert_eq!(entity_names(block), ["G"]);
}

#[test]
fn unknown_attributes_are_warnings_with_their_place() {
    let parsed = parse_ok("counters X {\n  colour = red\n  counter a: scale = 2\n}");
    let got: Vec<(usize, usize)> = parsed.warnings.iter().map(|w| (w.line, w.column)).collect();
    assert_eq!(got, [(2, 3), (3, 14)]);
    assert!(
        parsed.warnings[0].message.contains("`colour`"),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn a_duplicate_counter_name_names_both_places() {
    let text = "counters A {\n  counter hits\n}\ncounters B {\n  group G {\n    counter hits: units = x\n  }\n}\n";
    assert_eq!(
        error(text),
        "/etc/ccad.conf:6:13: counter `hits` is defined twice: first at line 2, column 11"
    );
}

#[test]
fn a_duplicate_entity_or_shown_name_names_both_places() {
    let text = "counters A { counter a }\ncounters B { group G { desc = \"A\"\n counter b } }";
    assert_eq!(
        error(text),
        "/etc/ccad.conf:2:31: entity `A` is defined twice: first at line 1, column 10"
    );
    let text = "counters A {\n counter a: name = \"Hits\"\n counter b: name = \"Hits\"\n}";
    assert!(
        error(text).starts_with("/etc/ccad.conf:3:10: counter name in one entity `Hits` is defined twice: first at line 2"),
        "{}",
        error(text)
    );
}

#[test]
fn an_attribute_given_twice_is_an_error() {
    assert_eq!(
        error("counters A {\n pace = 1000\n pace = 2000\n}"),
        "/etc/ccad.conf:3:2: attribute `pace` is defined twice: first at line 2, column 2"
    );
}

#[test]
fn a_standard_entity_name_is_refused() {
    assert_eq!(
        error("counters CPU { counter a }"),
        "/etc/ccad.conf:1:10: entity `CPU` is a name the standard counters use"
    );
    assert!(error("counters X { group \"Terminal eth0\" { counter a } }").contains("standard"));
}

#[test]
fn syntax_errors_name_line_and_column() {
    let cases = [
        ("pace = 1", "1:1: expected `counters NAME {`, found `pace`"),
        (
            "counters { }",
            "1:10: expected a name after `counters`, found `{`",
        ),
        (
            "counters A\n\n  pace = 1000",
            "3:3: expected `{` to open block `A`, found `pace`",
        ),
        (
            "counters A {\n counter a\n",
            "1:12: the `{` of block `A` is never closed",
        ),
        (
            "counters A {\n counter a {\n units = x\n",
            "2:12: the `{` of counter `a` is never closed",
        ),
        (
            "counters A {\n desc = \"open\n}",
            "2:9: this string is not closed on its line",
        ),
        (
            "counters A {\n pace = \n}",
            "2:9: expected a value for `pace`, found the end of the line",
        ),
        (
            "counters A {\n pace 1000\n}",
            "2:7: expected `=` after `pace`, found `1000`",
        ),
        (
            "counters A {\n desc = two words\n}",
            "2:13: expected the end of `desc`'s value (quote a value with spaces), found `words`",
        ),
        (
            "counters A {\n pace = 10\n}",
            "2:9: pace `10` is not a number of milliseconds from 100 to 3600000",
        ),
        (
            "counters A {\n pipe = tmp/cca\n}",
            "2:9: pipe `tmp/cca` is not an absolute path",
        ),
        (
            "counters A {\n group G { group H { } }\n}",
            "2:12: groups do not nest",
        ),
        (
            "counters A {\n counter a {\n counter b\n }\n}",
            "3:2: `counter` inside counter `a`: is a `}` missing?",
        ),
        (
            "counters A {\n counter a = 1\n}",
            "2:12: expected `:` or `{` after the counter's name, found `=`",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(error(text), format!("/etc/ccad.conf:{want}"), "{text:?}");
    }
}

#[test]
fn over_long_strings_are_config_errors_naming_the_limit() {
    let text = format!(
        "counters A {{\n counter a: desc = \"{}\"\n}}",
        "x".repeat(600)
    );
    assert_eq!(
        error(&text),
        "/etc/ccad.conf:2:20: `desc` of 600 bytes is longer than the 512 bytes a description may have"
    );
    let text = format!("counters {} {{ }}", "N".repeat(200));
    assert!(
        error(&text).contains("a block's name of 200 bytes"),
        "{}",
        error(&text)
    );
}

#[test]
fn too_many_counters_are_refused() {
    let mut text = String::from("counters A {\n");
    for i in 0..=MAX_COUNTERS {
        text.push_str(&format!("counter c{i}\n"));
    }
    text.push('}');
    assert!(error(&text).contains("1025 counters are declared; at most 1024"));
}

#[test]
fn a_missing_file_is_no_custom_counters_and_a_non_utf8_one_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(load(&dir.path().join("ccad.conf")).expect("loads"), None);
    let path = dir.path().join("bad.conf");
    std::fs::write(&path, b"counters A {\n counter \xff\n}").expect("write");
    let e = load(&path).expect_err("not UTF-8");
    assert!(
        e.to_string()
            .ends_with("bad.conf:2:10: the file is not UTF-8 text"),
        "{e}"
    );
}

#[test]
fn a_duplicate_is_named_in_file_order_even_across_a_group() {
    let text = "counters A {\n  group G {\n    counter hits\n  }\n  counter hits\n}\n";
    assert_eq!(
        error(text),
        "/etc/ccad.conf:5:11: counter `hits` is defined twice: first at line 3, column 13"
    );
}
