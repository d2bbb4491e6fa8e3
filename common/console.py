"""What reaches the console: the project's own lines, not NeMo's and Lightning's start-up chatter.

Loading a Canary prints a dozen lines that say nothing the user can act on: OneLogger's telemetry notices, NeMo's
info lines (tokenizer built, model restored), hydra's "Error getting class at ...get_nemo_transformer" (logged on
every build, harmless: the decoder's target is a function, which hydra then calls), Lightning's "GPU available"
and "Seed set" lines, and library warnings (deprecations, Lhotse's sampler advice). `quiet()` holds them back,
before those libraries are imported (their loggers keep the filters and levels set here); `--verbose` shows
everything. Errors and the project's own `[tag]` lines always show.
"""
from __future__ import annotations

import logging
import os
import warnings

# loggers whose INFO lines are start-up chatter: (logger, level it is held at)
_LEVELS = {
    "lightning.fabric.utilities.seed": logging.WARNING,
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "pytorch_lightning.utilities.rank_zero": logging.WARNING,
    "lightning.fabric.utilities.rank_zero": logging.WARNING,
    "nv_one_logger": logging.ERROR,  # telemetry notices ("OneLogger: ...", "No exporters were provided")
}
_HARMLESS = ("Error getting class at nemo.collections.asr.modules.transformer.get_nemo_transformer",)
_WARNING_CATEGORIES = (UserWarning, FutureWarning, DeprecationWarning)


class _HoldBack(logging.Filter):
    """NeMo sets its logger to INFO when it is imported, so its level cannot be held: a filter on the logger can."""

    def filter(self, record: logging.LogRecord) -> bool:
        # NeMo's warnings too: on restore it advises calling setup_training_data(), lists configs, and so on
        if record.name == "nemo_logger" and record.levelno < logging.ERROR:
            return False
        return not record.getMessage().startswith(_HARMLESS)


_FILTER = _HoldBack()
_state = {"quiet": False, "levels": {}, "warnings": []}


def quiet(verbose: bool = False) -> None:
    """Hold the chatter back (call before NeMo and Lightning load); `verbose=True` lets everything through again."""
    if verbose:
        _release()
        return
    if _state["quiet"]:
        return
    _state["quiet"] = True
    os.environ.setdefault("WANDB_SILENT", "true")  # wandb's banner; the run's own line says where it logs
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars for loading a local folder
    for name, level in _LEVELS.items():
        logger = logging.getLogger(name)
        _state["levels"][name] = logger.level
        logger.setLevel(level)
    for name in ("nemo_logger", "hydra.utils"):
        logging.getLogger(name).addFilter(_FILTER)
    _state["warnings"] = list(warnings.filters)
    for category in _WARNING_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)


def _release() -> None:
    if not _state["quiet"]:
        return
    _state["quiet"] = False
    for name, level in _state["levels"].items():
        logging.getLogger(name).setLevel(level)
    for name in ("nemo_logger", "hydra.utils"):
        logging.getLogger(name).removeFilter(_FILTER)
    warnings.filters[:] = _state["warnings"]
    getattr(warnings, "_filters_mutated", lambda: None)()  # the module caches which warnings it has shown


def verbose_requested(argv: list[str]) -> bool:
    """Whether a command line asks for --verbose (read before parsing: the filters must be in place before the
    recipe's imports)."""
    return "--verbose" in argv
