"""``python -m mailbak``: the same as the ``mailbak`` command."""

from mailbak.cli import main

main()
