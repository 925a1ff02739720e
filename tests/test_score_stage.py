"""The score stage's chunk scoring: identical responses to one prompt are judged once, copies get the same row."""

from __future__ import annotations

from pathlib import Path

from fusechat3 import schema
from fusechat3.recipe import load_recipe, resolve_model
from fusechat3.scoring import stage as score_stage
from fusechat3.scoring.reward import RewardModel

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toyworld" / "imf.yaml"


def test_identical_responses_are_judged_once_and_get_the_same_scores(monkeypatch):
    recipe = load_recipe(RECIPE)
    math = schema.make_prompt(
        domain="math", source_dataset="t", messages=[{"role": "user", "content": "1+1?"}], gold="2"
    )
    chat = schema.make_prompt(domain="instruction", source_dataset="t", messages=[{"role": "user", "content": "hi"}])
    prompts = {p["prompt_id"]: p for p in (math, chat)}
    texts = [
        (math, "a", "The answer is \\boxed{2}."),
        (math, "a", "The answer is \\boxed{2}."),  # a copy from the same source
        (math, "b", "The answer is \\boxed{2}."),  # and from another source
        (math, "b", "The answer is \\boxed{3}."),
        (chat, "a", "The answer is \\boxed{2}."),  # same text, other prompt: judged on its own
        (chat, "a", "hello there"),
    ]
    chunk = [
        schema.make_sample(
            prompt_id=p["prompt_id"],
            model=m,
            sample_idx=i,
            text=t,
            finish_reason="stop",
            num_tokens=3,
            sampling_key="k",
        )
        for i, (p, m, t) in enumerate(texts)
    ]
    seen = {"rm": 0, "verify": 0}
    verify = score_stage.verify_many

    def counting_verify(prompts_, texts_, **kw):
        seen["verify"] += len(texts_)
        return verify(prompts_, texts_, **kw)

    monkeypatch.setattr(score_stage, "verify_many", counting_verify)
    with RewardModel(resolve_model("toyworld:reward"), max_length=512) as rm:
        score = rm.score

        def counting_score(convs):
            seen["rm"] += len(convs)
            return score(convs)

        rm.score = counting_score
        rows = score_stage._score_chunk(recipe, rm, chunk, prompts)
        alone = [
            r for r, _ in score([prompts[s["prompt_id"]]["messages"] + [schema.assistant(s["text"])] for s in chunk])
        ]
    assert seen == {"rm": 4, "verify": 4}
    assert [(r["model"], r["sample_idx"]) for r in rows] == [(s["model"], s["sample_idx"]) for s in chunk]
    assert rows[0]["reward"] == rows[1]["reward"] == rows[2]["reward"]
    assert [r["verdict"] for r in rows[:4]] == ["passed", "passed", "passed", "wrong_answer"]
    for row, expected in zip(rows, alone, strict=True):  # the same rewards as scoring every copy
        assert abs(row["reward"] - expected) < 1e-5
