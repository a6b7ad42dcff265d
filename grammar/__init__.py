"""The grammar of the rule language (edgerules.lark), shipped inside the package as `edgerules.grammar`."""
