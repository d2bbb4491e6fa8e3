"""Entry-point wrapper: a `UserError` is printed as one clear paragraph (no traceback) with exit code 2; Ctrl+C
outside the training loop ends with a one-line message and exit code 130."""
from __future__ import annotations

import os
import sys
from typing import Callable


def run_main(main: Callable[[], int]) -> int:
    # NeMo and Lightning are chatty; keep their info lines out of the user's way unless asked for
    os.environ.setdefault("NEMO_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from common.atomic import no_space_error
    from common.console import quiet, verbose_requested
    from common.errors import Interrupted, UserError

    quiet(verbose=verbose_requested(sys.argv[1:]))

    try:
        return main() or 0
    except UserError as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:  # a full disk is the user's to fix: say where, and how much is left
        full = no_space_error(e)
        if full is None:
            raise
        print(f"\nerror: {full}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, Interrupted):
        # Ctrl+C outside the training loop (loading, data preparation, a validation pass before training);
        # inside it, training stops at a step boundary and saves instead of getting here.
        print("\n[interrupt] stopped by Ctrl+C outside the training loop (while loading or preparing): no training "
              "step was in progress, so there was nothing to save; files written before are complete. Run the same "
              "command again to start over.", file=sys.stderr, flush=True)
        return 130
