"""`llmfleet run --log-level`: the flag, OperatorOptions, and the loggers it sets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from llmfleet.cli import build_parser, main
from llmfleet.config import LOG_LEVELS, OperatorOptions
from llmfleet.controller import operator
from llmfleet.controller.operator import configure_logging

LOGGERS = ("llmfleet", "kopf", "kopf.objects", "aiohttp.access")


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What a handler on the root logger (at INFO, as kopf.configure leaves it) receives."""
    saved = {name: logging.getLogger(name).level for name in (*LOGGERS, "")}
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root = logging.getLogger()
    handler = Collect()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield seen
    root.removeHandler(handler)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _levels() -> dict[str, str]:
    return {name: logging.getLevelName(logging.getLogger(name).level) for name in LOGGERS}


def test_flag_defaults_to_info_and_offers_the_operators_levels() -> None:
    assert build_parser().parse_args(["run"]).log_level == "info"
    for level in LOG_LEVELS:  # the ones configure_logging knows, no more
        assert build_parser().parse_args(["run", "--log-level", level]).log_level == level
    for level in ("trace", "critical"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--log-level", level])
    assert OperatorOptions().log_level == "info"


def test_unknown_level_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--log-level", "verbose"])
    assert exc.value.code == 2 and "invalid choice: 'verbose'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="log level must be one of"):
        configure_logging("verbose")


def test_the_flag_reaches_operator_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[OperatorOptions] = []
    monkeypatch.setattr(operator, "run", seen.append)
    assert main(["run", "--log-level", "warning", "--namespace", "a"]) == 0
    assert seen[0].log_level == "warning" and seen[0].namespaces == ("a",)


def test_no_flags_mean_the_options_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[OperatorOptions] = []
    monkeypatch.setattr(operator, "run", seen.append)
    assert main(["run"]) == 0
    assert seen == [OperatorOptions()]
    assert main(["run", "--xds-port", "0", "--scale-up-period", "3", "-n", "a", "-n", "b"]) == 0
    assert (seen[1].xds_port, seen[1].scale_up_period, seen[1].namespaces) == (0, 3.0, ("a", "b"))


@pytest.mark.parametrize(
    "level, expected",
    [
        ("debug", {"llmfleet": "DEBUG", "kopf": "DEBUG", "kopf.objects": "DEBUG", "aiohttp.access": "DEBUG"}),
        ("info", {"llmfleet": "INFO", "kopf": "INFO", "kopf.objects": "WARNING", "aiohttp.access": "WARNING"}),
        ("warning", {"llmfleet": "WARNING", "kopf": "WARNING", "kopf.objects": "WARNING",
                     "aiohttp.access": "WARNING"}),
        ("error", {"llmfleet": "ERROR", "kopf": "ERROR", "kopf.objects": "ERROR", "aiohttp.access": "ERROR"}),
    ],
)
def test_configure_logging_sets_the_loggers(level, expected, records) -> None:
    configure_logging(level)
    assert _levels() == expected


def test_debug_reaches_the_root_handler_and_info_hides_per_object_lines(records) -> None:
    configure_logging("debug")
    logging.getLogger("llmfleet.controller.x").debug("reconciling")
    logging.getLogger("kopf.objects").info("handler succeeded")
    assert [r.getMessage() for r in records] == ["reconciling", "handler succeeded"]
    records.clear()
    configure_logging("info")
    logging.getLogger("llmfleet.controller.x").debug("reconciling")
    logging.getLogger("kopf.objects").info("handler succeeded")
    logging.getLogger("llmfleet.controller.x").info("scaled up")
    assert [r.getMessage() for r in records] == ["scaled up"]
    records.clear()
    configure_logging("warning")
    logging.getLogger("llmfleet").info("scaled up")
    logging.getLogger("kopf").warning("watch stream failed")
    assert [r.getMessage() for r in records] == ["watch stream failed"]
