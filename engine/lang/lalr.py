"""A fast path from text to AST: Lark's own LALR tables and lexers, driven by one tight loop that
builds the AST while it parses (no Lark tree, no second pass, positions only where asked).

Lark's general loop spends ~75% of a 10,000-rule parse on per-token objects: the lexer thread,
propagated positions on every tree node, the tree itself and its transformation. This loop uses
the same parse table, the same contextual lexer patterns (so a keyword is reserved exactly where
Lark reserves it) and the same child filters (placeholders, inlined `_rules`, `?rules`), and
hands each reduction straight to AstBuilder, with a node's span computed as Lark's
propagate_positions computes it (from the first to the last positioned child, filtered
keywords included).

It is only the fast path: on anything unusual (a syntax error, a stack deeper than the nesting
bound, a number too long to be surely finite) it returns None and parse.py parses the file the
general way, which gives the exact diagnostics of before.
"""
from __future__ import annotations

import re

from lark import Lark, Token, Tree

try:   # Lark's internals (tested with lark 1.1.9-1.3): without them parse.py uses the general parse
    from lark.parse_tree_builder import ChildFilterLALR, ChildFilterLALR_NoPlaceholders, maybe_create_child_filter
    from lark.parsers.lalr_analysis import Shift
    from lark.visitors import _vargs_meta
except ImportError:   # pragma: no cover
    Shift = None

from . import ast
from .build import AstBuilder

LONG_NUMBER = 300   # characters: a longer NUMBER or DURATION may be inf, which the general path reports


class _Meta:
    """What AstBuilder reads from a node's meta (Lark's Meta has no slots and more fields)."""

    __slots__ = ("line", "column", "end_line", "end_column", "empty")

    def __init__(self, first: Token, last: Token):
        self.line, self.column = first.line, first.column
        self.end_line, self.end_column = last.end_line, last.end_column
        self.empty = False


# Token() without the keyword-deprecation shim of its __new__, where this Lark has one
_new_token = Token._future_new.__func__ if hasattr(Token, "_future_new") else (lambda cls, *args: cls(*args))


class _Lexers(dict):
    def __init__(self, basics: dict):
        super().__init__()
        self.basics = basics
        self.made: dict = {}   # shared by the states: 452 states here have 77 master regexes

    def __missing__(self, state):
        basic = self.basics[state]
        scanner = basic.scanner
        if len(scanner._mres) != 1:
            raise ValueError("a lexer split over several regexes")
        made = self[state] = (_skipping(scanner, basic.ignore_types, self.made).match, basic.callback,
                              basic.newline_types, basic.ignore_types)
        return made


class FastParser:
    """Built once from the Lark parser (grammar analysis, lexers); parse() is thread-safe."""

    def __init__(self, lark: Lark, max_depth: int):
        if Shift is None:
            raise ValueError("this Lark lacks the internals the fast path drives")
        frontend = lark.parser
        table = frontend.parser._parse_table
        self.rules = list(lark.rules)
        index = {rule: i for i, rule in enumerate(self.rules)}
        # One int per action, keyed by plain str (Lark's keys and rule names are Tokens, whose
        # __eq__ is Python code): a shift to state s is s, a reduction by rule i is -1 - i.
        self.states = {state: {str(name): (arg if action is Shift else -1 - index[arg])
                               for name, (action, arg) in row.items()}
                       for state, row in table.states.items()}
        self.start_state = table.start_states["start"]
        self.end_state = table.end_states["start"]
        self.max_depth = max_depth
        self.filters = [(len(rule.expansion), *_child_filter(rule, lark.options.maybe_placeholders), str(rule.origin.name))
                        for rule in self.rules]
        # parser state -> (match, unless callbacks, newline types, ignored types), made at a state's
        # first token: Lark builds a state's scanner when first asked (452 states, 0.08 s for all)
        self.lexers = _Lexers(frontend.lexer.lexers)

    def parse(self, text: str, file: str) -> ast.Program | None:
        """The AST of one file, or None: parse it the general way."""
        tokens: list[Token] = []
        span = [0]   # index in tokens of the first token of the reduction being built
        try:
            return self._run(text, self._reductions(file, tokens, span), tokens, span)
        except Exception:   # a shape this loop does not know: the general path decides
            return None

    def _reductions(self, file: str, tokens: list, span: list) -> list[tuple]:
        """Per rule: (its length, its child filter around AstBuilder's method, its name)."""
        builder = AstBuilder(file)

        def user(name: str):
            method = getattr(builder, name, None)
            if method is None:
                return lambda children: Tree(name, children)
            wrapper = getattr(method, "visit_wrapper", None)
            if wrapper is None:
                return method
            if wrapper is _vargs_meta:   # @v_args(meta=True): the method itself, without two wrappers
                bound = method.base_func
                return lambda children: bound(_Meta(tokens[span[0]], tokens[-1]), children)
            return lambda children: wrapper(method, name, children, _Meta(tokens[span[0]], tokens[-1]))

        users = {}
        return [(n, None if make is None else make(users[name] if name in users else users.setdefault(name, user(name))),
                 origin) for n, make, name, origin in self.filters]

    def _run(self, text: str, reductions: list, tokens: list, span: list):
        states, lexers, end_state, max_depth = self.states, self.lexers, self.end_state, self.max_depth
        new_token, shifted = _new_token, tokens.append
        # Per stack entry: parser state, value, and the index of its first token (an entry that
        # spans no token starts where the next one does, so a reduction starts at its first entry's).
        state_stack, values, starts = [self.start_state], [], []
        pos, line, line_start, size = 0, 1, 0, len(text)
        while True:
            if pos < size:
                match, unless, newline_types, ignore_types = lexers[state_stack[-1]]
                m = match(text, pos)
                token_type = m.lastgroup
                if token_type is None:   # only ignored text: the end, or what no terminal matches
                    if m.end() < size:
                        return None
                    pos = size
                    continue
                value = m.group(token_type)
                start = m.end() - len(value)
                if start != pos:   # whitespace and comments skipped before the token
                    newlines = text.count("\n", pos, start)
                    if newlines:
                        line += newlines
                        line_start = text.rindex("\n", pos, start) + 1
                    pos = start
                token_line, column = line, pos - line_start + 1
                if token_type in newline_types:
                    newlines = value.count("\n")
                    if newlines:
                        line += newlines
                        line_start = pos + value.rindex("\n") + 1
                pos += len(value)
                if token_type in ignore_types:
                    continue
                token = new_token(Token, token_type, value, start, token_line, column, line,
                                  pos - line_start + 1, pos)
                if token_type in unless:
                    token = unless[token_type](token)
                    token_type = token.type
                if (token_type == "NUMBER" or token_type == "DURATION") and len(value) > LONG_NUMBER:
                    return None
            else:
                token, token_type = None, "$END"
            while True:
                action = states[state_stack[-1]][token_type]
                if action >= 0:   # shift
                    if token is None or len(state_stack) > max_depth:
                        return None
                    state_stack.append(action)
                    values.append(token)
                    starts.append(len(tokens))
                    shifted(token)
                    break
                n, callback, origin = reductions[-1 - action]
                if callback is None:   # `?rule: child`: the child itself, under the rule's state
                    goto = state_stack[-1] = states[state_stack[-2]][origin]
                    if token is None and goto == end_state:
                        return values[-1]
                    continue
                if n:
                    first = span[0] = starts[-n]
                    children = values[-n:]
                    del state_stack[-n:], values[-n:], starts[-n:]
                else:
                    first = span[0] = len(tokens)
                    children = []
                value = callback(children)
                goto = states[state_stack[-1]][origin]
                state_stack.append(goto)
                values.append(value)
                starts.append(first)
                if token is None and goto == end_state:
                    return values[-1]


_IGNORABLE = (" ", "\t", "\r", "\n", "\f", "#x", "//x", "/*x*/", ";x")


def _skipping(scanner, ignore_types, made: dict) -> re.Pattern:
    """The state's master regex behind a run of its ignored terminals (whitespace, comments), and
    the token made optional: one match a token instead of one per token and one per gap. Only
    where no other terminal can start where an ignored one does (then the skip changes nothing).
    made: what earlier states built (452 states share 77 master regexes here)."""
    (master,) = scanner._mres
    ignored = [t.pattern.to_regexp() for t in scanner.terminals if t.name in ignore_types]
    if not ignored:
        return master
    key = (master.pattern, master.flags, tuple(ignored))
    if key in made:
        return made[key]
    samples = [s for s in _IGNORABLE if any(re.match(p, s, master.flags) for p in ignored)]
    for t in scanner.terminals:
        if t.name not in ignore_types and (t.name, key[2]) not in made:
            other = re.compile(t.pattern.to_regexp(), master.flags)
            if any(other.match(sample) for sample in samples):
                raise ValueError(f"terminal {t.name} can start where an ignored one does")
            made[(t.name, key[2])] = True
    made[key] = re.compile(f"(?:{'|'.join(ignored)})*(?:{master.pattern})?", master.flags)
    return made[key]


def _child_filter(rule, placeholders: bool):
    """(make, name): make(user) is Lark's child filter for RULE, written out as one expression
    (`user([c[1], None] + c[3])`), and name the method it calls. An inlined `_rule` builds no
    Tree: its value is its children's list, spliced into its parent's. make is None for a
    `?rule` of one kept child: its value is that child, whatever the method."""
    name = rule.alias or rule.options.template_source or rule.origin.name
    inlined = str(rule.origin.name).startswith("_")
    if inlined and name != rule.origin.name:
        raise ValueError("an inlined rule with an alias")
    empty = rule.options.empty_indices if placeholders else None
    made = maybe_create_child_filter(rule.expansion, rule.options.keep_all_tokens, False, empty)
    if made is None:
        include, trailing = [(i, False, 0) for i in range(len(rule.expansion))], 0
    elif made.func is ChildFilterLALR:
        include, trailing = made.args
    elif made.func is ChildFilterLALR_NoPlaceholders:
        include, trailing = [(i, x, 0) for i, x in made.args[0]], 0
    else:
        raise ValueError(f"an unknown child filter {made.func!r}")
    parts, items = [], []
    for i, expand, nones in include:
        items += ["None"] * nones
        if expand:
            if items:
                parts.append("[" + ", ".join(items) + "]")
                items = []
            parts.append(f"c[{i}]")
        else:
            items.append(f"c[{i}]")
    items += ["None"] * trailing
    if items or not parts:
        parts.append("[" + ", ".join(items) + "]")
    if len(parts) > 1 and parts[0] == "c[0]":
        # `_list: _list item`: the list so far is this reduction's alone (taken off the stack), so
        # it grows in place; a new list each time made a 10,000-statement file quadratic
        children = f"((g := c[0]).extend({' + '.join(parts[1:])}) or g)"
    else:
        children = " + ".join(parts)
    if children == "[c[0]]" and rule.options.expand1 and not rule.alias and not inlined:
        return None, name   # one kept child and a `?rule`: the reduction passes it on as it is
    if inlined:
        body = children
    elif rule.options.expand1 and not rule.alias:
        body = f"(k[0] if len(k := {children}) == 1 else user(k))"
    else:
        body = f"user({children})"
    namespace: dict = {}
    exec(f"def make(user):\n    def reduce(c):\n        return {body}\n    return reduce", namespace)
    return namespace["make"], name
