"""Help texts that state every option's default, like argparse's ArgumentDefaultsHelpFormatter,
without "(default: None)" / "(default: False)" for options whose absence is the default, and with
lists written as they are typed."""

from __future__ import annotations

import argparse



def _nothing(default) -> bool:
    """No default worth stating (`is`: 0 == False, yet a default of 0 is worth stating)."""
    return default is None or default is False or default is argparse.SUPPRESS or default in ([], ())


def _stated(text: str) -> bool:
    return "(default" in text or "default:" in text or "%(default)" in text


def _written(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends " (default: X)" unless the help already states a default or there is none to state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _stated(text) or _nothing(action.default) or not action.option_strings:
            return text
        return f"{text} (default: {_written(action.default)})".replace("%", "%%").strip()


def apply_everywhere(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give `parser` and all its sub-command parsers the defaults-stating formatter; an option
    without a help text still shows its default."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_everywhere(sub)
        elif action.option_strings and not action.help and not _nothing(action.default):
            # argparse asks the formatter only about options that have a help text
            action.help = f"(default: {_written(action.default)})".replace("%", "%%")
    return parser
