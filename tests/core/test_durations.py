"""One duration grammar (dbrev.core.durations) for the CRD pattern, the operator's spec and `--older-than`;
one default per setting, shared by the CLI and the CRD."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from dbrev.core import durations, options
from dbrev.pg.archive import parse_age
from dbrev.cli import build_parser
from dbrev.controller.spec import SpecError, parse_duration, parse_spec
from dbrev.controller.crd import crd
from dbrev.core.errors import BadInput


@pytest.mark.parametrize("text,seconds", [("45s", 45), ("10m", 600), ("1h30m", 5400), ("30d", 30 * 86400),
                                          ("1.5h", 5400), ("1d12h", 129600)])
def test_one_grammar_everywhere(text, seconds):
    assert durations.parse_duration(text) == seconds
    assert parse_duration(text) == seconds  # the operator's spec
    assert parse_age(text) == timedelta(seconds=seconds)  # dbrev archive prune --older-than
    assert re.fullmatch(durations.DURATION_PATTERN, text)  # the CRD's validation


@pytest.mark.parametrize("text", ["", "10", "10 minutes", "m10", "1h 30m", "1w", "-5m"])
def test_what_the_grammar_refuses_everyone_refuses(text):
    with pytest.raises(ValueError, match="1h30m or 30d"):
        durations.parse_duration(text)
    with pytest.raises(SpecError):
        parse_duration(text)
    with pytest.raises(BadInput):
        parse_age(text or " ")
    assert not re.fullmatch(durations.DURATION_PATTERN, text)


def _crd_props():
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_the_cli_and_the_crd_share_each_default():
    apply = build_parser().parse_args(["apply", "-r", "head"])
    props = _crd_props()
    db, pol = props["database"]["properties"], props["policy"]["properties"]
    pairs = [(apply.timeout, pol["timeoutSeconds"]["default"], options.DEFAULT_RUN_TIMEOUT),
             (apply.connect_timeout, db["connectTimeoutSeconds"]["default"], options.DEFAULT_CONNECT_TIMEOUT),
             (apply.lock_timeout, db["lockTimeoutSeconds"]["default"], options.DEFAULT_LOCK_TIMEOUT),
             (apply.statement_timeout, db["statementTimeoutSeconds"]["default"], options.DEFAULT_STATEMENT_TIMEOUT)]
    for cli_default, crd_default, default in pairs:
        assert cli_default == crd_default == default
    assert options.DEFAULT_RUN_TIMEOUT == 3600


def test_the_spec_parser_defaults_are_the_same():
    spec = parse_spec({"revision": "head", "migrations": {"configMapRefs": [{"name": "m"}]},
                       "database": {"urlSecretRef": {"name": "s"}}})
    assert (spec.timeout, spec.connect_timeout, spec.lock_timeout, spec.statement_timeout) == (
        options.DEFAULT_RUN_TIMEOUT, options.DEFAULT_CONNECT_TIMEOUT, options.DEFAULT_LOCK_TIMEOUT,
        options.DEFAULT_STATEMENT_TIMEOUT)
