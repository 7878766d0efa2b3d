"""``kubectl-lifeboat``'s command line: restore points, connection flags anywhere, one-line refusals."""

import re
import shlex
from pathlib import Path

import pytest
from lifeboat.operator.plugin import args


def test_a_txid_or_a_zoned_time_names_the_restore_point() -> None:
    assert args.restore_point("00000000000000a3") == {"txid": "00000000000000a3"}
    assert args.restore_point("2024-05-01T12:00:00Z") == {"timestamp": "2024-05-01T12:00:00Z"}
    assert args.restore_point("2024-05-01T14:00:00.250+02:00") == {"timestamp": "2024-05-01T12:00:00.25Z"}


@pytest.mark.parametrize(("value", "says"), [
    ("yesterday", "expected an RFC 3339 time"),
    ("A3", "expected an RFC 3339 time"),
    ("2024-05-01T12:00:00", "needs a zone"),
])
def test_a_bad_restore_point_is_refused_naming_the_flag(value: str, says: str) -> None:
    with pytest.raises(args.UsageError, match=says) as refused:
        args.parse(["restore", "db", "--to", value])
    assert str(refused.value).startswith(f"--to {value!r}")


def test_connection_flags_count_before_and_after_the_command() -> None:
    before = args.parse(["-n", "prod", "--context", "east", "status"])
    after = args.parse(["status", "-n", "prod", "--context", "east"])
    for parsed in (before, after):
        assert (parsed.namespace, parsed.context, parsed.kubeconfig) == ("prod", "east", None)
    assert args.parse(["--kubeconfig", "/k", "pause", "db"]).kubeconfig == "/k"


def test_restore_defaults_to_the_latest_state_in_place() -> None:
    parsed = args.parse(["restore", "db"])
    assert (parsed.point, parsed.into, parsed.timeout) == ({}, None, None)
    parsed = args.parse(["restore", "db", "--to", "00000000000000a3", "--into", "scratch"])
    assert (parsed.point, parsed.into) == ({"txid": "00000000000000a3"}, "scratch")


def test_verify_waits_ten_minutes_unless_told() -> None:
    assert args.parse(["verify", "db"]).timeout == 600
    with pytest.raises(args.UsageError, match="expected more than 0 seconds"):
        args.parse(["verify", "db", "--timeout", "0"])


def test_unknown_commands_and_missing_names_are_usage_errors() -> None:
    with pytest.raises(args.UsageError, match="invalid choice"):
        args.parse(["explode"])
    with pytest.raises(args.UsageError, match="NAME"):
        args.parse(["logs"])


def documented_lines() -> list[str]:
    """The `kubectl lifeboat` lines of README's and the chart README's plugin sections (comments cut)."""
    repo = Path(__file__).resolve().parents[2]
    lines = []
    for readme, heading in ((repo / "README.md", "### kubectl plugin"),
                            (repo / "charts" / "lifeboat" / "README.md", "## kubectl plugin")):
        section = readme.read_text().split(heading, 1)[1].split("\n#", 1)[0]
        for block in re.findall(r"```sh\n(.*?)```", section, re.S):
            lines += [line.split("#", 1)[0].strip() for line in block.splitlines()
                      if line.startswith("kubectl lifeboat ")]
    return lines


def test_the_documented_examples_parse() -> None:
    lines = documented_lines()
    assert len(lines) >= 3, lines
    for line in lines:
        args.parse(shlex.split(line)[2:])
