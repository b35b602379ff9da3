"""The operator's command line refuses values it cannot run with, naming the flag."""

import pytest

from pretrain_operator.__main__ import _parser


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--workers", "0", "argument --workers: must be 1 or more, not 0"),
     ("--progress-seconds", "-1", "argument --progress-seconds: must be above 0, not -1")],
)  # fmt: skip
def test_a_value_it_cannot_run_with_is_refused_naming_the_flag(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args([f"{flag}={value}"])
    assert message in capsys.readouterr().err


def test_the_defaults_are_the_documented_ones() -> None:
    args = _parser().parse_args([])
    assert (args.workers, args.progress_seconds, args.leader_elect) == (4, 30.0, False)
