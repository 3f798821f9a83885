#!/usr/bin/env python3
"""Checks that the engine crate's modules import one way: no circle in its module graph.

The graph comes from `cargo modules dependencies` (the `use` edges between modules), to which
this adds the paths written inline in code (`crate::group::Members` in a type, say), which
`cargo modules` does not see. A module is a node; `a -> b` means code in `a` names something in
`b`. Any cycle fails, printed as a path. `--dot FILE` also writes the module graph for Graphviz.

    python3 .ci/modules.py                 # check crates/zerocast
    python3 .ci/modules.py --dot graph.dot  # and draw it

Needs cargo-modules (`cargo install cargo-modules --version 0.27.0 --locked`; .ci/run installs it).
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATE = "zerocast"
SRC = os.path.join(ROOT, "crates", CRATE, "src")


def modules_from_tree():
    """Every module of the crate, by path, from the files: `zerocast::a::b` -> file."""
    mods = {}
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), SRC)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            mods["::".join([CRATE] + rel)] = os.path.join(dirpath, f)
    return mods


def cargo_modules_edges():
    cmd = ["cargo", "modules", "dependencies", "-p", CRATE, "--lib", "--no-externs",
           "--no-fns", "--no-traits", "--no-types", "--no-owns", "--no-sysroot"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("cargo modules failed:\n" + out.stderr[-3000:])
    edges = set()
    for m in re.finditer(r'"([\w:]+)" -> "([\w:]+)" \[label="uses"', out.stdout):
        edges.add((m.group(1), m.group(2)))
    return edges


def strip_tests(text):
    """Drops `#[cfg(test)] mod tests { ... }` blocks: tests may look anywhere."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\((?:all\()?test[^\]]*\]\s*mod \w+ \{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        i = j
    out.append(text[i:])
    return "".join(out)


def inline_edges(mods):
    """`crate::a::b::Item` and `super::Item` written in code, resolved to the longest module."""
    edges = set()
    for mod, path in mods.items():
        text = strip_tests(open(path).read())
        text = re.sub(r"//[^\n]*", "", text)  # comments, doc links included
        # `super` is the parent of the file's module (a mod.rs file is its directory's module).
        parent = "::".join(mod.split("::")[:-1])
        refs = [CRATE + "::" + r for r in re.findall(r"\bcrate::((?:\w+::)*\w+)", text)]
        refs += [parent + "::" + r for r in re.findall(r"\bsuper::((?:\w+::)*\w+)", text)]
        for r in refs:
            segs = r.split("::")
            while segs and "::".join(segs) not in mods:
                segs.pop()
            target = "::".join(segs)
            if target and target != mod:
                edges.add((mod, target))
    return edges


def circles(nodes, edges):
    """The strongly connected components with more than one module (Tarjan)."""
    succ = {n: sorted({b for a, b in edges if a == n}) for n in nodes}
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ.get(v, []):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def find_cycle(nodes, edges):
    succ = {n: sorted({b for a, b in edges if a == n}) for n in nodes}
    color, stack = {}, []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in succ.get(n, []):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if color.get(m) is None:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(nodes):
        if color.get(n) is None:
            c = visit(n)
            if c:
                return c
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dot", help="write the module graph to this file")
    args = ap.parse_args()
    mods = modules_from_tree()
    edges = {(a, b) for a, b in cargo_modules_edges() | inline_edges(mods)
             if a in mods and b in mods and a != b}
    if args.dot:
        with open(args.dot, "w") as f:
            f.write("digraph zerocast {\n  rankdir=BT;\n  node [shape=box];\n")
            for a, b in sorted(edges):
                f.write(f'  "{a[len(CRATE) + 2:] or CRATE}" -> "{b[len(CRATE) + 2:] or CRATE}";\n')
            f.write("}\n")
    cycle = find_cycle(mods, edges)
    if cycle:
        for comp in circles(mods, edges):
            inner = sorted((a, b) for a, b in edges if a in comp and b in comp)
            print("circle of " + ", ".join(comp) + ":\n  " +
                  "\n  ".join(f"{a} -> {b}" for a, b in inner), file=sys.stderr)
        sys.exit("module circle: " + " -> ".join(cycle))
    print(f"{len(mods)} modules, {len(edges)} dependencies between them, no circle")


if __name__ == "__main__":
    main()
