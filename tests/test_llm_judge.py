"""The LLM judge of win rates (`eval.llm_judge`): judge requests through the real openai client to a scripted
OpenAI-compatible server in a thread, both answer orders, verdict parsing, and the win rate they give."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from openai_server import Scripted

from fusechat3.evaluation.llm_judge import LLMJudgeSpec, judge_pairs, outcome, verdict
from fusechat3.evaluation.stage import _scores

ROOT = Path(__file__).resolve().parents[1]


def _prompts(n: int) -> list[dict]:
    return [
        {
            "prompt_id": f"p{i}",
            "domain": "instruction",
            "messages": [{"role": "user", "content": f"question {i}"}],
            "meta": json.dumps({"benchmark": "alpaca_eval", "baseline": f"baseline answer {i}"}),
        }
        for i in range(n)
    ]


def _answers(messages: list[dict]) -> tuple[str, str]:
    text = messages[-1]["content"]
    a = re.search(r"Assistant A's Answer\|>\n(.*?)\n<\|The End of Assistant A", text, re.S).group(1)
    b = re.search(r"Assistant B's Answer\|>\n(.*?)\n<\|The End of Assistant B", text, re.S).group(1)
    return a, b


@pytest.fixture
def server():
    servers: list[Scripted] = []

    def start(answer) -> Scripted:
        servers.append(Scripted(answer=answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_verdicts_and_outcomes() -> None:
    assert verdict("A is terse. Final verdict: [[B]]") == "B"
    assert verdict("[[A]] at first, but on reflection [[C]]") == "C"  # the last one counts
    assert verdict("no verdict here [A]") is None and verdict("") is None
    assert outcome("A", "B") == 1.0 and outcome("B", "A") == 0.0  # the model better in both orders / in neither
    assert outcome("A", "A") == 0.5  # a judge that always picks the first answer: the swap cancels it
    assert outcome("C", None) == 0.5 and outcome(None, "B") == 1.0 and outcome(None, None) is None


def test_a_position_biased_judge_gives_fifty_percent(server) -> None:
    s = server(lambda messages: "Assistant A looks fine. [[A]]")
    rows = judge_pairs(LLMJudgeSpec(model="fake", base_url=s.url), _prompts(6), [f"my answer {i}" for i in range(6)])
    assert [r["outcome"] for r in rows] == [0.5] * 6 and {r["verdicts"] for r in rows} == {"A/A"}
    assert len(s.requests) == 12  # each prompt judged in both orders
    sent = [r["body"] for r in s.requests]
    assert all(b["model"] == "fake" and b["temperature"] == 0.0 and b["max_tokens"] == 1024 for b in sent)
    firsts = sorted(_answers(b["messages"])[0] for b in sent)
    assert firsts == sorted([f"my answer {i}" for i in range(6)] + [f"baseline answer {i}" for i in range(6)])
    assert sent[0]["messages"][0]["role"] == "system" and "question" in sent[0]["messages"][1]["content"]


def test_the_judges_preference_becomes_the_win_rate(server) -> None:
    """A judge that prefers the answer with "good" in it, says "[[C]]" when both have it, and gives no verdict
    for prompt 5: the model wins 0-2, ties 3-4, loses 6-7, and prompt 5 is unjudged."""

    def answer(messages: list[dict]) -> str:
        a, b = _answers(messages)
        if "5" in a:
            return "I cannot decide."
        good_a, good_b = "good" in a, "good" in b
        return "[[C]]" if good_a == good_b else ("[[A]]" if good_a else "[[B]]")

    prompts = _prompts(8)
    for i in (6, 7):  # the baseline better
        meta = json.loads(prompts[i]["meta"])
        prompts[i]["meta"] = json.dumps({**meta, "baseline": f"good baseline {i}"})
    texts = ["good 0", "good 1", "good 2", "plain 3", "plain 4", "good 5", "plain 6", "plain 7"]
    s = server(answer)
    found = judge_pairs(LLMJudgeSpec(model="fake", base_url=s.url), prompts, texts)
    assert [r["outcome"] for r in found] == [1.0, 1.0, 1.0, 0.5, 0.5, None, 0.0, 0.0]
    rows = [
        {"benchmark": "alpaca_eval", "text": t, "baseline_length": 15, "verdict": "unchecked", **f}
        for t, f in zip(texts, found, strict=True)
    ]
    scores, detail = _scores(rows, seed=0)
    figures = detail["alpaca_eval"]
    assert (figures["wins"], figures["ties"], figures["losses"], figures["unjudged"]) == (3, 2, 2, 1)
    assert figures["win_rate"] == 57.14 and scores["alpaca_eval"] == 0.5714  # (3 + 2 x 0.5) / 7 judged


def test_a_recipe_takes_one_judge_or_the_other(tmp_path: Path) -> None:
    from fusechat3.errors import RecipeError
    from fusechat3.recipe import load_recipe

    recipe = ROOT / "recipes" / "toyworld" / "imf.yaml"
    llm = "eval.llm_judge={model: judge, base_url: 'http://localhost:8000/v1', api_key_env: JUDGE_KEY}"
    loaded = load_recipe(recipe, [llm])
    assert isinstance(loaded.eval_judge, LLMJudgeSpec) and loaded.eval_judge.api_key_env == "JUDGE_KEY"
    assert load_recipe(recipe).eval_judge.model == "toyworld:reward"  # the default: the scoring reward model
    with pytest.raises(RecipeError, match="either judge .* or llm_judge .*, not both"):
        load_recipe(recipe, [llm, "eval.judge={model: 'toyworld:reward'}"])


def test_a_judge_the_server_does_not_serve_is_one_line(server) -> None:
    from fusechat3.errors import UserError

    s = server(lambda messages: "[[A]]")
    with pytest.raises(UserError, match=r"^eval.llm_judge: openai: .* does not serve model 'gpt-judge'"):
        judge_pairs(LLMJudgeSpec(model="gpt-judge", base_url=s.url), _prompts(1), ["x"])
