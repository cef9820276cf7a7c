"""`python -m cxrlab` = `cxr`."""

from cxrlab.cli import main

main()
