"""Entry-point wrapper: a `UserError` is printed as one clear paragraph (no traceback) with exit code 2."""
from __future__ import annotations

import os
import sys
from typing import Callable


def run_main(main: Callable[[], int]) -> int:
    # NeMo and Lightning are chatty; keep their info lines out of the user's way unless asked for
    os.environ.setdefault("NEMO_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from common.errors import UserError

    try:
        return main() or 0
    except UserError as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 2
