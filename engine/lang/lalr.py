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

from lark import Lark, Token, Tree
from lark.parse_tree_builder import ParseTreeBuilder
from lark.parsers.lalr_analysis import Shift

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


class FastParser:
    """Built once from the Lark parser (grammar analysis, lexers); parse() is thread-safe."""

    def __init__(self, lark: Lark, max_depth: int):
        frontend = lark.parser
        table = frontend.parser._parse_table
        self.states = table.states
        self.start_state = table.start_states["start"]
        self.end_state = table.end_states["start"]
        self.max_depth = max_depth
        self.builder = ParseTreeBuilder(lark.rules, Tree, False, False, lark.options.maybe_placeholders)
        self.names = {rule: rule.alias or rule.options.template_source or rule.origin.name
                      for rule in lark.rules}
        self.lexers = {}   # parser state -> (match, unless callbacks, newline types, ignored types)
        for state, basic in frontend.lexer.lexers.items():
            scanner = basic.scanner
            if len(scanner._mres) != 1:
                raise ValueError("a lexer split over several regexes")
            self.lexers[state] = (scanner._mres[0].match, basic.callback, basic.newline_types, basic.ignore_types)

    def parse(self, text: str, file: str) -> ast.Program | None:
        """The AST of one file, or None: parse it the general way."""
        callbacks, current = self._callbacks(file)
        try:
            return self._run(text, callbacks, current)
        except Exception:   # a shape this loop does not know: the general path decides
            return None

    def _callbacks(self, file: str):
        """Lark's child filters around AstBuilder's methods for this file. `current` holds the
        first and last token of the reduction being built, for the methods that take a meta."""
        builder = AstBuilder(file)
        current = [None, None]

        def user(name: str):
            method = getattr(builder, name, None)
            if method is None:
                return lambda children: Tree(name, children)
            wrapper = getattr(method, "visit_wrapper", None)
            if wrapper is None:
                return method
            return lambda children: wrapper(method, name, children, _Meta(current[0], current[1]))

        funcs = {name: user(name) for name in set(self.names.values())}
        callbacks = {}
        for rule, chain in self.builder.rule_builders:
            f = funcs[self.names[rule]]
            for wrap in chain:
                f = wrap(f)
            callbacks[rule] = f
        return callbacks, current

    def _run(self, text: str, callbacks: dict, current: list):
        states, lexers, end_state, max_depth = self.states, self.lexers, self.end_state, self.max_depth
        state_stack = [self.start_state]
        values, firsts, lasts = [], [], []   # per stack entry: value, first and last token (None: empty)
        pos, line, line_start, size = 0, 1, 0, len(text)
        token_type = None
        while True:
            if pos < size:
                match, unless, newline_types, ignore_types = lexers[state_stack[-1]]
                m = match(text, pos)
                if m is None:
                    return None
                value, token_type = m.group(0), m.lastgroup
                start, column = pos, pos - line_start + 1
                token_line = line
                if token_type in newline_types:
                    newlines = value.count("\n")
                    if newlines:
                        line += newlines
                        line_start = pos + value.rindex("\n") + 1
                pos += len(value)
                if token_type in ignore_types:
                    continue
                token = Token(token_type, value, start, token_line, column, line, pos - line_start + 1, pos)
                if token_type in unless:
                    token = unless[token_type](token)
                    token_type = token.type
                if (token_type == "NUMBER" or token_type == "DURATION") and len(value) > LONG_NUMBER:
                    return None
            else:
                token = None
                token_type = "$END"
            while True:
                action, arg = states[state_stack[-1]][token_type]
                if action is Shift:
                    if token is None:
                        return None
                    state_stack.append(arg)
                    values.append(token)
                    firsts.append(token)
                    lasts.append(token)
                    if len(state_stack) > max_depth:
                        return None
                    break
                n = len(arg.expansion)
                first = last = None
                if n:
                    children = values[-n:]
                    for f in firsts[-n:]:
                        if f is not None:
                            first = f
                            break
                    for f in reversed(lasts[-n:]):
                        if f is not None:
                            last = f
                            break
                    del state_stack[-n:], values[-n:], firsts[-n:], lasts[-n:]
                else:
                    children = []
                current[0], current[1] = first, last
                value = callbacks[arg](children)
                _, goto = states[state_stack[-1]][arg.origin.name]
                state_stack.append(goto)
                values.append(value)
                firsts.append(first)
                lasts.append(last)
                if token is None and goto == end_state:
                    return values[-1]
