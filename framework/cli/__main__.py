"""`python -m framework.cli ...` is the `seqtune` command (how launched workers start)."""
from framework.cli import main

main()
