"""The authoring loop around the language: policy tests, the formatter, and diff/replay of two policy versions."""
