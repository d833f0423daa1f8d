"""The command-line layer: one module per command, each with ``build_parser()`` and ``main(argv=None) -> int``.

The only part of the package that parses flags, configures logging and writes to stdout/stderr. Shared flags are
declared once in :mod:`liftkit.cli.options`; :mod:`liftkit.cli.runner` maps errors to exit codes, resolves
``--device`` and records provenance. Console scripts (``pyproject.toml``) and the top-level scripts of a checkout
both call these ``main`` functions.
"""
