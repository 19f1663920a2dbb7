"""Evaluation: distribution distances now; metrics, suites and commands follow (issue 4)."""
