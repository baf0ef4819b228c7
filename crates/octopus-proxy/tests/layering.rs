//! Dependencies between the modules of `octopus-proxy` point one way: no module may
//! import, directly or through others, a module that imports it. Read from the
//! `crate::` paths of each source file (the crate root's own items, such as
//! `crate::Shared`, belong to no module and are not edges). Run by `make test`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// module -> modules it names through `crate::...`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    let mut files = Vec::new();
    for entry in walk(&src) {
        let rel = entry
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "lib.rs" {
            continue;
        }
        let module = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        modules.insert(module.clone());
        files.push((module, std::fs::read_to_string(&entry).unwrap()));
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in files {
        let deps = g.entry(module.clone()).or_default();
        for name in crate_paths(&text) {
            if name != module && modules.contains(&name) {
                deps.insert(name);
            }
        }
    }
    g
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// First segments after every `crate::`, including each item of `crate::{a, b::c}`.
/// Comments are skipped, so prose that mentions a path is not an edge.
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group only: `{a::{x, y}, b}` -> a, b.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.push(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

/// Every cycle's modules, found by depth-first search (each reported once).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            // One spelling per cycle: rotated to start at its smallest name.
            let min = cycle.iter().enumerate().min_by_key(|(_, s)| *s).unwrap().0;
            cycle.rotate_left(min);
            found.insert(cycle);
            return;
        }
        if done.contains(n) {
            return;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, path, done, found);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut found = BTreeSet::new();
    for n in g.keys() {
        let mut path = Vec::new();
        let mut done = BTreeSet::new();
        visit(n, g, &mut path, &mut done, &mut found);
    }
    found.into_iter().collect()
}

#[test]
fn modules_have_no_import_cycles() {
    let g = graph();
    for (m, deps) in &g {
        println!(
            "{m} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between modules of octopus-proxy:\n{}",
        found
            .iter()
            .map(|c| format!("  {} -> {}", c.join(" -> "), c[0]))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_paths_and_cycles() {
    let paths =
        crate_paths("use crate::{a::{x, y}, b};\n// crate::c in prose\nlet _ = crate::d::f();");
    assert_eq!(paths, ["a", "b", "d"]);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}
