#!/usr/bin/env python3
"""Reports circles of imports between the modules of each crate in crates/*/src.

A module is a file (src/foo.rs and src/foo/mod.rs are the module `foo`);
each crate root (lib.rs, main.rs, bin/*.rs, bin/*/main.rs) starts a graph
of its own. An edge A -> B is a path `crate::B...`, `super::...`, `self::...` or
`child::...` (a child module of A by its name) in A's code (in a `use` or inline) that names an item of
module B, B not A. Code under `#[cfg(test)]` (test modules, inline or in
their own file) is left out unless --tests is given. Inline `mod x { }`
blocks count as their file's module.

Prints every strongly connected set of modules (a circle) with the edges
inside it and where each comes from (the first of each pair of modules,
and how many more). A circle is marked CIRCLE if it remains when the
edges from a module to its own descendants are left out (siblings that
import each other, the kind the module tree does not explain); the
others close only through a child's use of an ancestor's items
(`use super::*` of a shared type). A name re-exported by a module
(`pub use child::X`) counts as an edge to where it is defined. Exits 1
if a CIRCLE exists, or with --strict any circle.

usage: scripts/check-import-cycles.py [--tests] [--strict] [--use-only] [ROOT]
"""
import os
import re
import sys
from collections import defaultdict


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith('/*', i):
            j = text.find('*/', i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', text[i:j]))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 10])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == '_')):
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r'[^\n]', ' ', text[i:j]))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            out.append(re.sub(r'[^\n]', ' ', text[i:j + 1]))
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\'|\\[^\n']{1,9}|[^\\'\n])'", text[i:i + 12])
            if m:
                out.append(' ' * len(m.group(0)))
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return ''.join(out)


def blank_test_code(text):
    """Blanks `#[cfg(test)]` items (braced or `;`), keeping line breaks."""
    out = list(text)
    for m in re.finditer(r'#\[cfg\(test\)\]', text):
        i = m.end()
        depth = 0
        j = i
        while j < len(text):
            if text[j] == '{':
                depth += 1
            elif text[j] == '}':
                depth -= 1
                if depth == 0:
                    break
            elif text[j] == ';' and depth == 0:
                break
            j += 1
        for k in range(m.start(), min(j + 1, len(text))):
            if out[k] != '\n':
                out[k] = ' '
    return ''.join(out)


def crate_roots(src):
    roots = []
    for name in ('lib.rs', 'main.rs'):
        if os.path.exists(os.path.join(src, name)):
            roots.append((name[:-3], os.path.join(src, name)))
    bindir = os.path.join(src, 'bin')
    if os.path.isdir(bindir):
        for e in sorted(os.listdir(bindir)):
            p = os.path.join(bindir, e)
            if e.endswith('.rs'):
                roots.append(('bin/' + e[:-3], p))
            elif os.path.exists(os.path.join(p, 'main.rs')):
                roots.append(('bin/' + e, os.path.join(p, 'main.rs')))
    return roots


def module_files(root_file, with_tests):
    """Maps module path (tuple) -> file, following `mod x;` declarations."""
    mods = {}

    def child_dir(path, file):
        d = os.path.dirname(file)
        base = os.path.basename(file)
        if not path or base == 'mod.rs':
            return d
        return os.path.join(d, base[:-3])

    def visit(path, file):
        mods[path] = file
        text = strip_comments_and_strings(open(file).read())
        if not with_tests:
            text = blank_test_code(text)
        for m in re.finditer(r'(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', text):
            pre = text[max(0, m.start() - 200):m.start()]
            pm = re.search(r'#\[path\s*=\s*"([^"]+)"\]\s*$', pre)
            name = m.group(1)
            d = child_dir(path, file)
            if pm:
                cand = [os.path.join(os.path.dirname(file), pm.group(1))]
            else:
                cand = [os.path.join(d, name + '.rs'), os.path.join(d, name, 'mod.rs')]
            for c in cand:
                if os.path.exists(c):
                    visit(path + (name,), c)
                    break
    visit((), root_file)
    return mods


DEF_RE = re.compile(
    r'(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?(?:(?:unsafe|async|const|extern\s+"C")\s+)*'
    r'(?:fn|struct|enum|const|static|type|trait|mod|union|macro_rules!)\s+(\w+)')


def scan(path, file, mods, with_tests, use_only):
    """What module `path` defines, imports (name -> absolute path, and
    glob paths) and refers to (absolute path, line, text)."""
    text = strip_comments_and_strings(open(file).read())
    if not with_tests:
        text = blank_test_code(text)
    inline = []  # inline `mod x { }` bodies
    for m in re.finditer(r'\bmod\s+\w+\s*\{', text):
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == '{':
                depth += 1
            elif text[j] == '}':
                depth -= 1
                if depth == 0:
                    break
            j += 1
        inline.append((m.end(), j))

    def nesting(pos):
        return sum(1 for a, b in inline if a <= pos < b)

    def absolute(segs, pos):
        start, segs = segs[0], list(segs[1:])
        here = list(path) + ['<inline>'] * nesting(pos)
        if start == 'crate':
            base = []
        elif start == 'self':
            base = here
        elif start == 'super':
            base = here[:-1] if here else None
            while segs and segs[0] == 'super':
                segs = segs[1:]
                base = base[:-1] if base else None
            if base is None:
                return None
        else:
            # relative to the file module: a child module's name
            if nesting(pos) or path + (start,) not in mods:
                return None
            base, segs = list(path), [start] + segs
        return tuple(b for b in base if b != '<inline>') + tuple(segs)

    def line_of(pos):
        return text.count('\n', 0, pos) + 1

    defined = set(DEF_RE.findall(text))
    imports, globs, refs = {}, [], []
    children = '|'.join(re.escape(m[-1]) for m in mods if len(m) == len(path) + 1 and m[:-1] == path)
    starts = 'crate|super|self' + ('|' + children if children else '')
    use_re = r'\buse\s+((?:' + starts + r')(?:::[\w{}, *:\s]+)?);'
    for m in re.finditer(use_re, text):
        stmt = re.sub(r'\s+', '', re.sub(r'\s+as\s+', '@', m.group(1)))
        for p in expand_use(stmt):
            alias = None
            if '@' in p:
                p, alias = p.split('@')
            full = absolute(p.split('::'), m.start())
            if full is None:
                continue
            if full[-1] == '*':
                globs.append(full[:-1])
                refs.append((full[:-1], line_of(m.start()), p, True))
                continue
            if alias != '_':
                imports[alias or full[-1]] = full
            refs.append((full, line_of(m.start()), p, False))
    if not use_only:
        for m in re.finditer(r'(?<![\w:.$])((?:' + starts + r')(?:::\w+)+)', text):
            if text[max(0, m.start() - 4):m.start()].strip().endswith('use'):
                continue
            full = absolute(m.group(1).split('::'), m.start())
            if full is not None:
                refs.append((full, line_of(m.start()), m.group(1), False))
    words = set(re.findall(r'\w+', text))
    return {'defined': defined, 'imports': imports, 'globs': globs, 'refs': refs, 'words': words}


def locate(full, mods, info, seen=frozenset()):
    """The module that defines what `full` names: (module, found)."""
    k = max(k for k in range(len(full) + 1) if full[:k] in mods)
    m, rest = full[:k], full[k:]
    if not rest:
        return m, True
    if full in seen:
        return m, False
    seen = seen | {full}
    x = rest[0]
    i = info[m]
    if x in i['defined']:
        return m, True
    if x in i['imports']:
        return locate(i['imports'][x] + rest[1:], mods, info, seen)
    for g in i['globs']:
        if g == m:
            continue
        t, ok = locate(g + rest, mods, info, seen)
        if ok:
            return t, True
    return m, False


def edges(path, mods, info):
    """(target module, line, text) of each reference of module `path`."""
    out = []
    i = info[path]
    for full, line, p, glob in i['refs']:
        if glob:
            # `use m::*`: an edge to where each name of m that this module
            # mentions is defined
            for w in sorted(i['words']):
                t, ok = locate(full + (w,), mods, info)
                if ok and t != path:
                    out.append((t, line, p + ' (' + w + ')'))
            continue
        t, _ = locate(full, mods, info)
        if t != path:
            out.append((t, line, p))
    return out


def expand_use(stmt):
    """`a::{b,c::{d,e}}` -> [`a::b`, `a::c::d`, `a::c::e`]."""
    m = re.match(r'^([^{]*?)(?:::)?\{(.*)\}$', stmt)
    if not m:
        return [stmt]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ''
    for ch in inner:
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
            continue
        depth += ch == '{'
        depth -= ch == '}'
        cur += ch
    if cur:
        parts.append(cur)
    out = []
    for p in parts:
        if p == 'self':
            out.append(prefix)
        else:
            out.extend(prefix + '::' + x for x in expand_use(p))
    return out


def sccs(nodes, graph):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def name(crate, mod):
    return crate + '::' + '::'.join(mod) if mod else crate


def main():
    args = sys.argv[1:]
    with_tests = '--tests' in args
    strict = '--strict' in args
    use_only = '--use-only' in args
    rest = [a for a in args if not a.startswith('--')]
    root = rest[0] if rest else os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
    other = 0
    total = 0
    for crate_dir in sorted(os.listdir(os.path.join(root, 'crates'))):
        src = os.path.join(root, 'crates', crate_dir, 'src')
        if not os.path.isdir(src):
            continue
        for rname, rfile in crate_roots(src):
            crate = f'{crate_dir}({rname})'
            mods = module_files(rfile, with_tests)
            graph = defaultdict(set)
            where = defaultdict(list)
            info = {p: scan(p, f, mods, with_tests, use_only) for p, f in mods.items()}
            for path, file in mods.items():
                for target, line, p in edges(path, mods, info):
                    graph[path].add(target)
                    rel = os.path.relpath(file, root)
                    where[(path, target)].append(f'{rel}:{line} {p}')
            down = defaultdict(set)
            for a, bs in graph.items():
                down[a] = {b for b in bs if b[:len(a)] != a}
            hard = {frozenset(c) for c in sccs(list(mods), down)}
            for comp in sccs(list(mods), graph):
                total += 1
                inner = [h for h in hard if h <= set(comp)]
                other += bool(inner)
                if inner:
                    kind = 'CIRCLE (also without parent->child edges: ' + '; '.join(
                        ', '.join(name(crate_dir, m) for m in sorted(h)) for h in inner) + ')'
                else:
                    kind = 'parent-child circle (children use items of an ancestor)'
                print(f'{kind} in {crate}: ' + ', '.join(name(crate_dir, m) for m in comp))
                cs = set(comp)
                for a in comp:
                    for b in sorted(graph[a]):
                        if b in cs:
                            w = where[(a, b)]
                            more = f' (+{len(w) - 1} more)' if len(w) > 1 else ''
                            print(f'    {name(crate_dir, a)} -> {name(crate_dir, b)}: {w[0]}{more}')
    print(f'{total} circles, {other} of them also without the edges from a module to its descendants')
    sys.exit(1 if (other or (strict and total)) else 0)


main()
