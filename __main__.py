"""``python -m drpopt`` runs the command line."""

from drpopt.cli.main import main

main()
