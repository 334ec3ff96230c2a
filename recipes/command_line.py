"""A recipe's command line: flags, or a YAML/JSON config file plus flag overrides; the examples' logging;
and ``run_recipe``, its ``__main__``: user errors as one line (no traceback), the process group left once a
distributed run is done."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Optional, Sequence

import yaml
from transformers import HfArgumentParser

from cram_hf.compression import NONE
from cram_hf.distributed import leave_process_group
from cram_hf.errors import UsageError, validated


def run_recipe(main: Callable) -> None:
    """A recipe's ``__main__``: run ``main()``; a :class:`UsageError` is one line on stderr and exit status 2,
    anything else keeps its traceback. A distributed run that finished leaves its process group together."""
    try:
        main()
    except UsageError as err:
        print(f"{os.path.basename(sys.argv[0])}: error: {err}", file=sys.stderr)
        sys.exit(2)
    leave_process_group()


def _config_to_flags(config: dict, path: str) -> list[str]:
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of argument names to values.")
    flags = []
    for key, value in config.items():
        if value is None:
            continue
        flags.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            # argparse list flags need at least one value: "none" stands for the empty list.
            flags.extend([str(v) for v in value] or [NONE])
        elif isinstance(value, bool):
            flags.append(str(value).lower())
        elif isinstance(value, dict):
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags


def parse_args(parser: HfArgumentParser, argv: Optional[Sequence[str]] = None):
    """Parse ``argv`` into the parser's dataclasses.

    ``run.py config.yaml`` (or ``.json``) reads every argument from the file — the same names as the flags;
    flags after the file override it: ``run.py config.yaml --max_steps 10``. Unknown keys are errors. What the
    dataclasses' checks raise is a :class:`UsageError`.
    """
    return validated(_parse_args, parser, argv)


def _parse_args(parser: HfArgumentParser, argv: Optional[Sequence[str]]):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
        path = argv.pop(0)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist.")
        argv = _config_to_flags(_read_config(path) or {}, path) + argv
    return parser.parse_args_into_dataclasses(args=argv)


def _read_config(path: str):
    """The YAML or JSON content of a config file; a syntax error is the user's, named by file, line and column
    (a parser's multi-line message would be a traceback's worth of noise)."""
    with open(path) as f:
        if path.endswith(".json"):
            try:
                return json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})."
                ) from None
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{path}: {where}not valid YAML ({problem}).") from None


def setup_logging(training_args, logger) -> None:
    """The examples' logging set-up: stdout, the process's log level on the script, cram_hf, datasets and
    transformers loggers (quiet on non-main ranks)."""
    import logging

    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("cram_hf").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(f"Training/evaluation parameters {training_args}")
