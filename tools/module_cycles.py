#!/usr/bin/env python3
"""Module dependency graph of a crate's top-level modules, and its cycles.

    python3 tools/module_cycles.py engine/src        # exits 1 when modules depend on each other in a cycle

A module depends on another when its files name `crate::other` (paths, `use`
lists, doc links excluded). Comments and strings are stripped first. Prints the
graph bottom-up (each module after what it uses) or the strongly connected
components that form cycles.
"""
import re
import sys
from pathlib import Path


def strip(src: str) -> str:
    src = re.sub(r"//[^\n]*", "", src)  # line and doc comments
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    src = re.sub(r'r#*"(?:.|\n)*?"#*', '""', src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    return src


def uses(src: str) -> set[str]:
    out = set(re.findall(r"\bcrate::(\w+)", src))
    # `use crate::{a, b::c, d::{e, f}}`: the names at the top level of the braces.
    for m in re.finditer(r"\bcrate::\{", src):
        depth, i, tok = 1, m.end(), ""
        while i < len(src) and depth:
            c = src[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif depth == 1 and c == ",":
                tok = ""
            if depth == 1 and (c.isalnum() or c == "_") and not tok.endswith("::"):
                tok += c
                if not (src[i + 1].isalnum() or src[i + 1] == "_"):
                    out.add(tok)
                    tok += "::"
            i += 1
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "engine/src")
    modules = {}
    for p in sorted(root.iterdir()):
        if p.name in ("lib.rs", "main.rs"):
            continue
        name = p.stem if p.is_file() and p.suffix == ".rs" else p.name
        files = [p] if p.is_file() else sorted(p.rglob("*.rs"))
        modules.setdefault(name, []).extend(files)
    graph = {}
    for name, files in modules.items():
        deps = set()
        for f in files:
            deps |= uses(strip(f.read_text()))
        graph[name] = sorted(d for d in deps if d in modules and d != name)
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    cycles = [c for c in sccs if len(c) > 1]
    for comp in sccs:  # Tarjan emits components dependencies-first
        for v in comp:
            print(f"{v:12} -> {', '.join(graph[v]) or '-'}")
    if cycles:
        for c in cycles:
            print("cycle: " + " <-> ".join(c), file=sys.stderr)
        return 1
    print(f"{root}: {len(graph)} modules, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
