"""The command-line layer: one Typer command module per DVC stage, assembled in
``stages.cli``. Modules here parse options, call one library function and report
what they wrote; no pipeline logic lives here."""
