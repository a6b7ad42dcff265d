"""The language: text -> parse -> AST -> check -> codegen/compile -> Decision, plus the interpreter.

Synchronous and pure: nothing here imports the serving side or Starlette. The stages, in order:
source.py (files and positions), parse.py and build.py (Lark tree -> frozen AST of ast.py),
schema.py (request fields), check.py (names, types, targets), codegen.py and compiler.py
(checked policy -> one Python function), interpret.py (the reference interpreter), decision.py
and policy.py (Decision, load_policy). spec.py holds the plain values handed to the gateway.
"""
