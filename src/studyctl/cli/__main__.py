"""`python -m studyctl.cli`: the same as the `studyctl` command."""

from __future__ import annotations

from studyctl.cli import main

main()
