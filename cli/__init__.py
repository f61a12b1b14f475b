"""The ``drpopt`` command line (typer); every command calls the public Python API."""
