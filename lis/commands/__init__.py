"""Command-line commands of the evaluator, one module each."""
