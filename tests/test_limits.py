"""The limits table (cifarlab/limits.py): environment overrides, bad values, and SECURITY.md
listing every limit with its default."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarlab import limits
from cifarlab.errors import CifarlabError

REPO = Path(__file__).resolve().parent.parent


def test_security_md_lists_every_limit_as_the_code_has_it() -> None:
    text = (REPO / "SECURITY.md").read_text()
    assert limits.markdown_table() in text, "SECURITY.md's limits table is out of date"


def test_a_limit_is_raised_by_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    lim = limits.MAX_IMAGE_PIXELS
    assert lim.get() == lim.default
    monkeypatch.setenv(lim.env, "200000000")
    assert lim.get() == 200_000_000
    monkeypatch.setenv(limits.MAX_DATA_FILE.env, "2")
    assert limits.megabytes(limits.MAX_DATA_FILE) == 2 << 20


@pytest.mark.parametrize("bad", ["0", "-3", "lots", "nan", "inf"])
def test_a_bad_limit_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(limits.MAX_ASPECT.env, bad)
    with pytest.raises(CifarlabError, match=r"CIFARLAB_MAX_ASPECT=.*must be a positive number"):
        limits.MAX_ASPECT.get()


def test_security_md_lists_every_serve_limit_with_its_flag_and_default() -> None:
    """Each of serve's limits on requests and clients has a row in SECURITY.md's serve table
    (its flag, its default as `Settings` and the CLI have it)."""
    import dataclasses
    import re

    from cifarlab.cli import build_parser
    from cifarlab.serve.settings import Settings

    text = (REPO / "SECURITY.md").read_text()
    rows = dict(re.findall(r"^\| `(--[a-z-]+)` \| ([\d,.]+)", text, re.M))
    not_limits = {"token", "batching", "max_batch", "batch_wait_ms", "uncertain_below"}
    not_limits |= {"decode_threads", "threads"}
    fields = [f for f in dataclasses.fields(Settings) if f.name not in not_limits]
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    cli_defaults = {a.dest: a.default for a in serve._actions}
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        assert flag in rows, f"SECURITY.md has no row for {flag}"
        assert float(rows[flag].replace(",", "")) == f.default, (flag, rows[flag], f.default)
        assert cli_defaults[f.name] == f.default, (flag, cli_defaults[f.name], f.default)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("grace_s", 0.0, "more than 0"),
        ("header_timeout_s", float("nan"), "more than 0"),
        ("max_header_kb", 4.0, "at least max_request_line_kb"),
        ("max_headers", 0, "1..10000"),
        ("max_connections_per_client", 999, "1 to max_connections (512)"),
    ],
)
def test_serve_client_limits_out_of_range_name_the_setting(
    field: str, value: float, says: str
) -> None:
    from cifarlab.errors import SettingError
    from cifarlab.serve.settings import Settings

    with pytest.raises(SettingError) as info:
        Settings(**{field: value})
    assert info.value.names == [field] and says in str(info.value)
