//! The crate's module map says which module uses which (`src/lib.rs`, "Which module uses
//! which"). This reads the `crate::` paths in the code of every module and checks that the map
//! tells the truth and that no two modules use each other, directly or around a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The modules of the crate: a file beside `lib.rs`, or a directory with a `mod.rs`.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(SRC)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs") || p.join("mod.rs").is_file())
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|m| m != "lib")
        .collect()
}

/// The text of a module: its file, or every `.rs` file under its directory.
fn module_source(module: &str) -> String {
    fn collect(dir: &Path, text: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read module dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                collect(&path, text);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).expect("read module file"));
                text.push('\n');
            }
        }
    }
    let file = Path::new(SRC).join(format!("{module}.rs"));
    let mut text = String::new();
    if file.is_file() {
        text = std::fs::read_to_string(&file).expect("read module");
    }
    let dir = Path::new(SRC).join(module);
    if dir.is_dir() {
        collect(&dir, &mut text);
    }
    text
}

/// The modules whose items `source` names through `crate::`, outside comments.
fn uses_in(source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in source.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or_default())
                    .collect(),
                None => vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()],
            };
            used.extend(
                names
                    .into_iter()
                    .filter(|n| modules.contains(*n))
                    .map(str::to_owned),
            );
        }
    }
    used
}

/// Who uses whom, as the code says.
fn code_graph() -> Graph {
    let modules = modules();
    modules
        .iter()
        .map(|m| {
            let mut used = uses_in(&module_source(m), &modules);
            used.remove(m);
            (m.clone(), used)
        })
        .collect()
}

/// Who uses whom, as the map in `lib.rs` says: `- `a` → `b`, `c`` and
/// `- `a`, `b`: nothing of this crate`.
fn documented_graph() -> Graph {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).expect("read lib.rs");
    let section = lib
        .split("//! # Which module uses which")
        .nth(1)
        .expect("lib.rs has a \"Which module uses which\" section");
    let names = |text: &str| -> Vec<String> {
        text.split(',')
            .map(|n| n.trim().trim_matches('`').to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    };
    // The section runs from the line after its heading to the end of the `//!` block; an item
    // starts with "- " and may go on over the next lines.
    let mut items: Vec<String> = Vec::new();
    for line in section.lines().skip(1).take_while(|l| l.starts_with("//!")) {
        let text = line.trim_start_matches("//!").trim();
        if let Some(item) = text.strip_prefix("- ") {
            items.push(item.to_owned());
        } else if let (Some(last), false) = (items.last_mut(), text.is_empty()) {
            last.push(' ');
            last.push_str(text);
        }
    }
    let mut graph = Graph::new();
    for item in &items {
        if let Some((from, to)) = item.split_once('→') {
            graph.insert(
                from.trim().trim_matches('`').to_owned(),
                names(to).into_iter().collect(),
            );
        } else if let Some((list, _)) = item.split_once(": nothing of this crate") {
            for m in names(list) {
                graph.insert(m, BTreeSet::new());
            }
        }
    }
    graph
}

/// A loop of modules that use each other, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_modules_use_each_other() {
    let graph = code_graph();
    assert_eq!(find_cycle(&graph), None, "module uses: {graph:#?}");
}

#[test]
fn the_module_map_in_lib_rs_says_who_uses_whom() {
    assert_eq!(documented_graph(), code_graph());
}

#[test]
fn a_loop_of_uses_is_found() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
        .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn uses_are_read_from_code_not_comments() {
    let modules: BTreeSet<String> = ["api", "daemon", "machine"].map(String::from).into();
    let source =
        "//! see [`crate::daemon`]\nuse crate::{api::X, machine};\nlet n = crate::agent_name();\n";
    assert_eq!(
        uses_in(source, &modules),
        BTreeSet::from(["api".to_owned(), "machine".to_owned()])
    );
}
