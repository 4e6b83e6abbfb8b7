"""`python -m deltanet.benchmarks.<name>`: a benchmark module run on its own, as `deltanet bench <name>`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from deltanet.errors import UserError


def module_main(prog: str, description: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """Parse argv with the module's options and run it; a UserError ends as argparse's one-line error."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        parser.error(str(error))
