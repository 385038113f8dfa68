"""Command-line options generated from the settings dataclasses (declared once, in the library).

Every field of a :class:`botnet.training.RunConfig` subclass becomes an
option: ``--field-name`` (plus the field's extra flags such as ``-b``), its
help text and default, and a type function that runs the field's own value
check, so a bad value stops at parsing with one line naming the option.
Both ``botnet train`` and ``botnet detect train`` build their shared
options from :class:`RunConfig`'s fields: same names, same checks.

Options default to None, so only the options actually given override the
config file (``-c``), and, with ``--resume``, the run's saved settings.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..runtime.checks import fraction, nonneg_int, positive_float, positive_int
from ..training.config import (RunConfig, _is_bool, _is_dict, _is_list, check_value, field_type_of, flag_name,
                               load_config_file)

__all__ = ["add_config_options", "config_overrides", "checked", "positive_int_arg", "nonneg_int_arg", "positive_float_arg",
           "fraction_arg", "device_arg"]


def checked(check: Any) -> Any:
    """An argparse ``type`` from a value check: its ValueError becomes argparse's one-line error."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def _field_arg(cls: type, spec: dataclasses.Field) -> Any:
    list_item = _is_list(field_type_of(cls, spec))  # argparse applies the type to each item

    def parse(text: str) -> Any:
        try:
            return check_value(cls, spec, text)[0] if list_item else check_value(cls, spec, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = spec.name
    return parse


def add_config_options(parser: argparse.ArgumentParser, cls: type[RunConfig], *, resume: bool = True) -> None:
    """Add one option per field of ``cls`` (grouped by the fields' ``group``), ``-c`` and ``--resume``."""
    groups: dict[str, Any] = {}
    specs = [spec for spec in dataclasses.fields(cls) if spec.metadata.get("cli", True) and "help" in spec.metadata]
    titles = [spec.metadata.get("group", "run") for spec in specs]
    # Task sections (data, model) first, then the shared recipe and run sections, as in --help.
    for title in sorted(dict.fromkeys(titles), key=lambda t: (t in ("recipe", "run"), t == "run")):
        groups[title] = parser.add_argument_group(title)

    def group(title: str) -> Any:
        return groups[title]

    run = group("run")
    run.add_argument("-c", "--config", metavar="YAML",
                     help="settings file (field: value per line); options given here override it")
    if resume:
        run.add_argument("--resume", metavar="DIR",
                         help="continue the run in DIR (or DIR/last.pt) exactly where it stopped, with its saved "
                         f"settings (only {', '.join(cls.RESUMABLE)} may change); 'auto': continue the run in "
                         "--out if it has a committed epoch, else start it there (implied after a torchrun "
                         "elastic restart)")
    for spec in specs:
        meta = spec.metadata
        kind = field_type_of(cls, spec)
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()  # type: ignore[misc]
        target = group(meta.get("group", "run"))
        if _is_bool(kind):
            if default is True:
                target.add_argument(f"--no-{spec.name.replace('_', '-')}", dest=spec.name, action="store_false",
                                    default=None, help=f"no {meta['help']}" if not meta["help"].startswith("progress")
                                    else "no progress bar")
            else:
                target.add_argument(*meta.get("flags", ()), flag_name(spec.name), dest=spec.name,
                                    action="store_true", default=None, help=meta["help"])
            continue
        choices = getattr(meta.get("check"), "choices", None)
        shown = "" if default is None else f" (default {default})"
        target.add_argument(
            *meta.get("flags", ()), flag_name(spec.name), dest=spec.name, default=None,
            type=_field_arg(cls, spec), nargs="+" if _is_list(kind) or _is_dict(kind) else None,
            metavar="{" + ",".join(map(str, choices)) + "}" if choices else None,
            help=f"{meta['help']}{shown}",
        )


def config_overrides(args: argparse.Namespace, cls: type[RunConfig]) -> dict[str, Any]:
    """Settings from ``-c FILE`` updated by the options given on the command line."""
    values = load_config_file(args.config, cls) if getattr(args, "config", None) else {}
    fields = {spec.name: spec for spec in dataclasses.fields(cls)}
    for name, value in vars(args).items():
        if name in fields and value is not None:
            if _is_dict(field_type_of(cls, fields[name])):  # argparse gave one {key: value} per item
                value = {k: v for item in value for k, v in item.items()}
            values[name] = value
    return values


positive_int_arg = checked(positive_int)
nonneg_int_arg = checked(nonneg_int)
positive_float_arg = checked(positive_float)


def fraction_arg(low: float = 0.0, high: float = 1.0, **kwargs: Any) -> Any:
    return checked(fraction(low, high, **kwargs))


def _device(text: str) -> str:
    if text != "auto":
        from ..runtime.device import parse_device

        parse_device(text)
    return text


device_arg = checked(_device)
