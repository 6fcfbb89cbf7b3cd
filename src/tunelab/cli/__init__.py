"""The `tunelab` command: one thin adapter per verb (parse → load config → stage)."""
