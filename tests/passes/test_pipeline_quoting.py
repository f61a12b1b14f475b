"""Pipeline strings: values holding ``,`` ``:`` ``|`` are quoted, and read back unchanged."""

from __future__ import annotations

import pytest

from drpopt.errors import BadInputError
from drpopt.passes import MaskPass, ScorePass, parse_pipeline
from drpopt.passes.pipeline_syntax import quote, split_top


def test_a_quoted_plan_path_keeps_its_comma_and_colon():
    (score, mask) = parse_pipeline('score,mask:plan="runs/1:plan,v1.json"')
    assert isinstance(score, ScorePass) and mask.plan == "runs/1:plan,v1.json"
    (mask,) = parse_pipeline("mask:plan='a|b.json'")
    assert mask.plan == "a|b.json"


def test_list_items_split_at_bars_outside_quotes():
    (mask,) = parse_pipeline("mask:exclude=layer1.*|'odd|name'|\"x,y\"")
    assert mask.exclude == ["layer1.*", "odd|name", "x,y"]


@pytest.mark.parametrize(
    "value", ["plan,v1.json", "run:1/p.json", "a|b", "k=v", "it's", 'say "hi"', " pad"]
)
def test_spec_quotes_what_it_must_and_reads_back(value):
    mask = MaskPass(plan=value, exclude=[value, "plain"])
    (again,) = parse_pipeline(mask.spec())
    assert again.plan == value and again.exclude == [value, "plain"]


def test_plain_values_stay_unquoted():
    assert MaskPass(rate=0.7, exclude=["a.*", "b"]).spec() == "mask:rate=0.7:exclude=a.*|b"
    assert quote("layer1.conv") == "layer1.conv"


def test_an_unterminated_quote_is_bad_input():
    with pytest.raises(BadInputError, match="unterminated"):
        parse_pipeline('mask:plan="a,b.json')
    with pytest.raises(BadInputError, match="unterminated"):
        split_top("a,'b", ",")


def test_unknown_pass_and_bad_argument_messages_stay():
    with pytest.raises(BadInputError, match=r"unknown pass 'v1\.json'"):
        parse_pipeline("mask:plan=plan,v1.json")  # unquoted: the comma splits passes
    with pytest.raises(BadInputError, match="quote a value"):
        parse_pipeline("mask:plan=run:1/p.json")


def test_toml_tables_keep_list_values_as_lists(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(
        '[[pass]]\nname = "mask"\nrate = 0.25\nexclude = ["a|b", "c,d"]\nplan = "x:y,z.json"\n'
    )
    (mask,) = parse_pipeline(path)
    assert mask.exclude == ["a|b", "c,d"] and mask.plan == "x:y,z.json" and mask.rate == 0.25


def test_toml_pipeline_string_uses_the_same_quoting(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("pipeline = \"score,mask:plan='a,b.json'\"\n")
    assert parse_pipeline(path)[1].plan == "a,b.json"
