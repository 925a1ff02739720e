"""Tests of the FuseChat-3.0 building rules on hand-made rows with known answers."""

from __future__ import annotations

import random

import pytest

from fusechat3 import schema
from fusechat3.building import BuildingSpec, build_sets, split_of
from fusechat3.config import validate

ALL_SFT = {"instruction": 1.0, "math": 1.0, "code": 1.0}
ALL_DPO = {"instruction": 0.0, "math": 0.0, "code": 0.0}


def prompt(domain: str = "instruction", text: str = "hi", **kw) -> dict:
    if domain == "math":
        kw.setdefault("gold", "4")
    if domain == "code":
        kw.setdefault("tests", ["assert f() == 1"])
    return schema.make_prompt(domain=domain, source_dataset="t", messages=[{"role": "user", "content": text}], **kw)


def resp(p: dict, model: str, idx: int, reward=None, correct=None, text=None, finish="stop", score=True):
    """A (Sample, Score or None) pair; the text defaults to one unique per response."""
    text = f"{model}-{idx}" if text is None else text
    sample = schema.make_sample(
        prompt_id=p["prompt_id"],
        model=model,
        sample_idx=idx,
        text=text,
        finish_reason=finish,
        num_tokens=3,
        sampling_key="k",
    )
    # Build the Score by hand so that a NaN reward can reach the builder as written by a careless scorer.
    sc = {"prompt_id": p["prompt_id"], "model": model, "sample_idx": idx, "reward": reward, "correct": correct}
    sc["verdict"] = "passed" if correct else "wrong_answer"
    return sample, (sc if score else None)


def build(prompts: list[dict], resps: list[tuple], only_source=None, target_source=None, **spec):
    spec.setdefault("sft_fraction", ALL_SFT)
    samples = [s for s, _ in resps]
    scores = [sc for _, sc in resps if sc is not None]
    return build_sets(
        prompts, samples, scores, BuildingSpec(**spec), only_source=only_source, target_source=target_source
    )


def only_dpo(result) -> dict:
    assert len(result.dpo) == 1, result.stats
    return result.dpo[0]


def only_sft(result) -> dict:
    assert len(result.sft) == 1, result.stats
    return result.sft[0]


def check_accounting(stats: dict) -> None:
    """Every prompt gives one row or one counted drop."""
    for d, n in stats["prompts"].items():
        assert n == stats["sft"][d] + stats["dpo"][d] + sum(stats["drops"][d].values()), d


# ---------------------------------------------------------------- instruction


def test_sft_takes_highest_reward_over_sources_and_skips_truncated_best():
    p = prompt()
    r = build(
        [p],
        [
            resp(p, "a", 0, 0.5),
            resp(p, "b", 0, 0.7),
            resp(p, "b", 1, 0.99, finish="length"),  # best reward but truncated
            resp(p, "c", 0, 0.6),
        ],
    )
    row = only_sft(r)
    assert row["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b-0"}]
    assert (row["model"], row["score_chosen"], row["score_rejected"]) == ("b", 0.7, None)
    assert (row["prompt_id"], row["domain"]) == (p["prompt_id"], "instruction")
    assert r.stats["invalid"]["instruction"] == {"truncated": 1}
    assert r.stats["sft"]["instruction"] == 1
    check_accounting(r.stats)


def test_sft_tie_on_best_reward_is_kept_and_picked_by_model_then_index():
    p = prompt()
    r = build([p], [resp(p, "b", 0, 0.8), resp(p, "a", 1, 0.8), resp(p, "a", 0, 0.2), resp(p, "a", 2, 0.8)])
    assert only_sft(r)["messages"][-1]["content"] == "a-1"


def test_dpo_pairs_come_from_one_source_even_when_a_cross_source_gap_is_bigger():
    p = prompt()
    r = build(
        [p],
        [
            resp(p, "a", 0, 0.80),
            resp(p, "a", 1, 0.78),  # a: gap 0.02, in band
            resp(p, "b", 0, 0.75),
            resp(p, "b", 1, 0.74),  # b: gap 0.01, in band; a-best vs b-worst would be 0.06
        ],
        sft_fraction=ALL_DPO,
    )
    row = only_dpo(r)
    assert row["prompt"] == [{"role": "user", "content": "hi"}]
    assert row["chosen"] == [{"role": "assistant", "content": "a-0"}]
    assert row["rejected"] == [{"role": "assistant", "content": "a-1"}]
    assert (row["model"], row["score_chosen"], row["score_rejected"]) == ("a", 0.80, 0.78)
    check_accounting(r.stats)


def test_dpo_with_several_in_band_sources_takes_the_highest_chosen_reward():
    p = prompt()
    resps = [resp(p, "a", 0, 0.50), resp(p, "a", 1, 0.45), resp(p, "b", 0, 0.70), resp(p, "b", 1, 0.66)]
    resps += [resp(p, "c", 0, 0.95), resp(p, "c", 1, 0.20)]  # highest chosen, but out of band
    row = only_dpo(build([p], resps, sft_fraction=ALL_DPO))
    assert (row["model"], row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("b", "b-0", "b-1")


@pytest.mark.parametrize(
    ("hi", "lo", "kept", "reason"),
    [
        (0.03, 0.02, True, None),  # gap 0.01 (0.009999999999999998 in floats): the low edge is inclusive
        (0.28, 0.18, True, None),  # gap 0.1 (0.10000000000000003): the high edge is inclusive
        (0.5, 0.49, True, None),
        (0.7, 0.6, True, None),
        (0.5099, 0.5, False, "gap_below"),
        (0.6001, 0.5, False, "gap_above"),
    ],
)
def test_reward_gap_band_edges_are_inclusive(hi, lo, kept, reason):
    p = prompt()
    r = build([p], [resp(p, "a", 0, hi), resp(p, "a", 1, lo)], sft_fraction=ALL_DPO)
    assert len(r.dpo) == int(kept)
    assert r.stats["drops"]["instruction"] == ({} if kept else {reason: 1})
    check_accounting(r.stats)


def test_reward_gap_per_domain_override_and_no_band():
    p = prompt()
    resps = [resp(p, "a", 0, 0.9), resp(p, "a", 1, 0.1)]  # gap 0.8
    assert build([p], resps, sft_fraction=ALL_DPO).stats["drops"]["instruction"] == {"gap_above": 1}
    row = only_dpo(build([p], resps, sft_fraction=ALL_DPO, reward_gap_per_domain={"instruction": None}))
    assert (row["score_chosen"], row["score_rejected"]) == (0.9, 0.1)
    wide = build([p], resps, sft_fraction=ALL_DPO, reward_gap_per_domain={"instruction": [0.5, 1.0]})
    assert len(wide.dpo) == 1


def test_dpo_ties_are_dropped():
    p, q = prompt(text="p"), prompt(text="q")
    resps = [resp(p, "a", 0, 0.5), resp(p, "a", 1, 0.5), resp(p, "a", 2, 0.5)]  # equal rewards
    resps += [resp(q, "a", 0, 0.55, text="same"), resp(q, "a", 1, 0.5, text="same ")]  # identical texts
    r = build([p, q], resps, sft_fraction=ALL_DPO, reward_gap=None)
    assert r.dpo == []
    assert r.stats["drops"]["instruction"] == {"tie": 2}


def test_dpo_without_two_responses_in_any_source_is_no_pair():
    p = prompt()
    r = build([p], [resp(p, "a", 0, 0.8), resp(p, "b", 0, 0.79)], sft_fraction=ALL_DPO)
    assert r.dpo == [] and r.stats["drops"]["instruction"] == {"no_pair": 1}


def test_invalid_responses_are_counted_by_reason():
    p = prompt()
    resps = [
        resp(p, "a", 0, 0.4),
        resp(p, "a", 1, float("nan")),
        resp(p, "a", 2, None),
        resp(p, "a", 3, 0.99, text="   "),
        resp(p, "a", 4, 0.99, finish="error", text=""),
        resp(p, "a", 5, 0.99, score=False),
        resp(p, "a", 6, None, finish="length", score=False),  # truncated and unscored: truncated
        resp(p, "a", 7, float("inf")),
    ]
    r = build([p], resps)
    assert only_sft(r)["messages"][-1]["content"] == "a-0"
    assert r.stats["invalid"]["instruction"] == {
        "empty": 1,
        "error": 1,
        "missing_score": 1,
        "no_reward": 3,
        "truncated": 1,
    }


def test_prompt_without_any_usable_response_is_dropped_with_a_reason():
    p, q = prompt(text="p"), prompt(text="q")
    r = build([p, q], [resp(p, "a", 0, None)])
    assert r.sft == []
    assert r.stats["drops"]["instruction"] == {"no_valid": 1, "no_samples": 1}
    check_accounting(r.stats)


# ---------------------------------------------------------------- math and code


def test_math_sft_correctness_wins_over_a_higher_reward():
    p = prompt("math")
    resps = [resp(p, "a", 0, 0.9, False), resp(p, "b", 0, 0.3, True), resp(p, "b", 1, 0.6, True)]
    row = only_sft(build([p], resps))
    assert (row["model"], row["messages"][-1]["content"], row["score_chosen"]) == ("b", "b-1", 0.6)


def test_math_dpo_is_best_correct_vs_worst_incorrect_of_one_source():
    p = prompt("math")
    resps = [
        resp(p, "a", 0, 0.50, True),
        resp(p, "a", 1, 0.48, True),
        resp(p, "a", 2, 0.45, False),
        resp(p, "a", 3, 0.47, False),
        resp(p, "b", 0, 0.90, True),  # b has no incorrect answer; a's worst incorrect would give a bigger gap
    ]
    row = only_dpo(build([p], resps, sft_fraction=ALL_DPO))
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("a-0", "a-2")
    assert (row["score_chosen"], row["score_rejected"]) == (0.50, 0.45)


def test_math_drops_no_correct_and_no_incorrect():
    p, q = prompt("math", "p"), prompt("math", "q")
    resps = [resp(p, "a", 0, 0.5, False), resp(p, "a", 1, 0.45, False)]
    resps += [resp(q, "a", 0, 0.5, True), resp(q, "a", 1, 0.45, True)]
    r = build([p, q], resps, sft_fraction=ALL_DPO)
    assert r.dpo == [] and r.stats["drops"]["math"] == {"no_correct": 1, "no_incorrect": 1}
    r = build([p, q], resps)
    assert [row["prompt_id"] for row in r.sft] == [q["prompt_id"]]
    assert r.stats["drops"]["math"] == {"no_correct": 1}


def test_math_correct_and_incorrect_only_in_different_sources_is_no_pair():
    p = prompt("math")
    r = build([p], [resp(p, "a", 0, 0.5, True), resp(p, "b", 0, 0.45, False)], sft_fraction=ALL_DPO)
    assert r.stats["drops"]["math"] == {"no_pair": 1}


def test_math_pair_uses_the_band_and_unchecked_answers_are_counted():
    p = prompt("math")
    resps = [resp(p, "a", 0, 0.3, True), resp(p, "a", 1, 0.9, False), resp(p, "a", 2, 0.1, None)]
    r = build([p], resps, sft_fraction=ALL_DPO)  # correct has the lower reward: gap -0.6
    assert r.stats["drops"]["math"] == {"gap_below": 1}
    assert r.stats["invalid"]["math"] == {"unchecked": 1}
    assert len(build([p], resps, sft_fraction=ALL_DPO, reward_gap_per_domain={"math": None}).dpo) == 1
    # Equal rewards are no tie when correctness orders the pair.
    same = [resp(p, "a", 0, 0.5, True), resp(p, "a", 1, 0.5, False)]
    assert len(build([p], same, sft_fraction=ALL_DPO, reward_gap_per_domain={"math": None}).dpo) == 1
    assert build([p], same, sft_fraction=ALL_DPO).stats["drops"]["math"] == {"gap_below": 1}


def test_math_without_rewards_uses_sample_order_and_no_band():
    p = prompt("math")
    resps = [resp(p, "b", 0, None, True), resp(p, "a", 3, None, True), resp(p, "a", 1, None, False)]
    resps += [resp(p, "a", 2, None, True)]
    row = only_sft(build([p], resps))
    assert (row["model"], row["messages"][-1]["content"], row["score_chosen"]) == ("a", "a-2", None)
    row = only_dpo(build([p], resps, sft_fraction=ALL_DPO))
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("a-2", "a-1")
    assert (row["score_chosen"], row["score_rejected"]) == (None, None)


def test_code_all_failed_is_dropped_and_passing_wins():
    p, q = prompt("code", "p"), prompt("code", "q")
    resps = [resp(p, "a", i, 0.5 + i / 10, False) for i in range(3)]
    resps += [resp(q, "a", 0, 0.9, False), resp(q, "a", 1, 0.2, True)]
    r = build([p, q], resps)
    assert r.stats["drops"]["code"] == {"all_failed": 1}
    assert only_sft(r)["messages"][-1]["content"] == "a-1"
    r = build([p, q], resps, sft_fraction=ALL_DPO, reward_gap=None)
    assert r.stats["drops"]["code"] == {"all_failed": 1}
    row = only_dpo(r)
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("a-1", "a-0")
    check_accounting(r.stats)


# ---------------------------------------------------------------- SFT-only domains and sources


def test_zh_is_sft_only_from_the_designated_source():
    p = prompt("zh", "你好")
    resps = [resp(p, "qwen", 0, 0.3), resp(p, "qwen", 1, 0.4), resp(p, "llama", 0, 0.99)]
    r = build([p], resps, sft_fraction=ALL_DPO, zh_source="qwen")
    row = only_sft(r)
    assert (row["model"], row["messages"][-1]["content"]) == ("qwen", "qwen-1")
    assert r.dpo == []
    assert r.stats["ignored"]["zh"] == {"other_source": 1}
    assert r.stats["split"]["zh"] == {"sft": 1, "dpo": 0}


def test_zh_without_rewards_takes_the_first_sample():
    p = prompt("zh", "你好")
    r = build([p], [resp(p, "qwen", 1, None), resp(p, "qwen", 0, None)], zh_source="qwen")
    assert only_sft(r)["messages"][-1]["content"] == "qwen-0"


def test_zh_source_missing_or_wrong_is_a_clear_error():
    p = prompt("zh", "你好")
    with pytest.raises(ValueError, match=r"building\.zh_source"):
        build([p], [resp(p, "qwen", 0, 0.5)])
    with pytest.raises(ValueError, match=r"building\.zh_source 'qwn' has no samples.*\['qwen'\]"):
        build([p], [resp(p, "qwen", 0, 0.5)], zh_source="qwn")


def test_only_source_restricts_every_rule():
    p, m, z = prompt(), prompt("math", "2+2"), prompt("zh", "你好")
    resps = [resp(p, "a", 0, 0.9), resp(p, "b", 0, 0.5), resp(m, "a", 0, 0.9, True), resp(m, "b", 0, 0.5, True)]
    resps += [resp(z, "b", 0, 0.5)]
    r = build([p, m, z], resps, only_source="b", zh_source="b")
    assert [(row["domain"], row["model"]) for row in sorted(r.sft, key=lambda x: x["domain"])] == [
        ("instruction", "b"),
        ("math", "b"),
        ("zh", "b"),
    ]
    assert r.stats["ignored"]["instruction"] == {"other_source": 1}
    r = build([p, m, z], resps, only_source="a", zh_source="b")
    assert {row["domain"] for row in r.sft} == {"instruction", "math"}
    assert r.stats["drops"]["zh"] == {"excluded_source": 1}
    assert all(row["model"] == "a" for row in r.sft)
    check_accounting(r.stats)
    with pytest.raises(ValueError, match=r"building\.only_source 'c' has no samples"):
        build([p], resps, only_source="c", zh_source="b")


# ---------------------------------------------------------------- split, determinism, errors


def test_split_is_deterministic_and_close_to_the_fraction():
    cfg = BuildingSpec()
    ids = [schema.stable_hash(i) for i in range(1000)]
    splits = [split_of(pid, "instruction", cfg) for pid in ids]
    assert splits == [split_of(pid, "instruction", BuildingSpec()) for pid in ids]
    assert 350 <= splits.count("sft") <= 450
    other_seed = [split_of(pid, "instruction", BuildingSpec(seed=1)) for pid in ids]
    assert other_seed != splits and 350 <= other_seed.count("sft") <= 450
    assert {split_of(pid, "zh", cfg) for pid in ids} == {"sft"}
    assert {split_of(pid, "math", BuildingSpec(sft_fraction={"math": 1.0})) for pid in ids} == {"sft"}
    assert {split_of(pid, "math", BuildingSpec(sft_fraction={"math": 0.0})) for pid in ids} == {"dpo"}


def test_domain_without_a_fraction_is_a_clear_error():
    p = prompt("poetry")
    with pytest.raises(ValueError, match=r"building\.sft_fraction has no entry for domain\(s\) \['poetry'\]"):
        build([p], [resp(p, "a", 0, 0.5)])
    row = only_sft(build([p], [resp(p, "a", 0, 0.5)], sft_fraction={"poetry": 1.0}))  # user domain: reward rule
    assert row["domain"] == "poetry"


def test_result_does_not_depend_on_input_order():
    rng = random.Random(0)
    prompts = [prompt(d, f"{d} {i}") for i in range(40) for d in ("instruction", "math", "code", "zh")]
    resps = []
    for p in prompts:
        for model in ("a", "b", "qwen"):
            for idx in range(3):
                finish = "length" if rng.random() < 0.1 else "stop"
                resps.append(resp(p, model, idx, round(rng.uniform(0.4, 0.6), 3), rng.random() < 0.5, finish=finish))
    cfg = {"sft_fraction": {"instruction": 0.4, "math": 0.4, "code": 0.4}, "zh_source": "qwen"}
    first = build(prompts, resps, **cfg)
    assert first.sft and first.dpo
    assert [r["prompt_id"] for r in first.sft] == sorted(r["prompt_id"] for r in first.sft)
    check_accounting(first.stats)
    rng.shuffle(prompts)
    rng.shuffle(resps)
    again = build(prompts, resps, **cfg)
    assert (again.sft, again.dpo, again.stats) == (first.sft, first.dpo, first.stats)


def test_orphan_rows_are_counted_and_duplicates_are_errors():
    p, ghost = prompt(text="p"), prompt(text="ghost")
    s, sc = resp(p, "a", 0, 0.5)
    gs, gsc = resp(ghost, "a", 0, 0.5)
    _, extra = resp(p, "a", 9, 0.5)
    r = build_sets([p], [s, gs], [sc, gsc, extra], BuildingSpec(sft_fraction=ALL_SFT))
    assert r.stats["rows"] == {"sample_without_prompt": 1, "score_without_sample": 1}
    with pytest.raises(ValueError, match=r"samples\[1\]: duplicate"):
        build_sets([p], [s, dict(s)], [sc], BuildingSpec(sft_fraction=ALL_SFT))
    with pytest.raises(ValueError, match=r"prompts\[1\]: duplicate prompt_id"):
        build_sets([p, dict(p)], [s], [sc], BuildingSpec(sft_fraction=ALL_SFT))
    with pytest.raises(schema.RowError, match=r"scores\[0\]: missing field\(s\) \['reward'\]"):
        build_sets([p], [s], [{k: v for k, v in sc.items() if k != "reward"}], BuildingSpec(sft_fraction=ALL_SFT))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"sft_fraction": {"math": 1.5}}, r"building\.sft_fraction\.math"),
        ({"reward_gap": [0.1, 0.01]}, r"building\.reward_gap' must be two numbers"),
        ({"reward_gap": [0.1]}, r"building\.reward_gap' must be two numbers"),
        ({"reward_gap_per_domain": {"math": "x"}}, r"building\.reward_gap_per_domain\.math"),
        ({"sft_only_domains": "zh"}, r"building\.sft_only_domains"),
    ],
)
def test_bad_config_values_name_the_recipe_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        validate(BuildingSpec, kwargs, where="building")


# ---------------------------------------------------------------- WRPO triplets


def test_wrpo_triplet_takes_best_source_response_and_targets_best_and_worst():
    p = prompt()
    r = build(
        [p],
        [
            resp(p, "a", 0, 0.50),
            resp(p, "a", 1, 0.55),
            resp(p, "b", 0, 0.90),  # best source response
            resp(p, "tgt", 0, 0.30),
            resp(p, "tgt", 1, 0.70),  # target's best
            resp(p, "tgt", 2, 0.10),  # target's worst
            resp(p, "tgt", 3, 0.95, finish="length"),  # truncated: counted, never picked
        ],
        sft_fraction=ALL_DPO,
        reward_gap=[0.01, 0.1],
        target_source="tgt",
    )
    assert len(r.wrpo) == 1, r.stats
    row = r.wrpo[0]
    assert row["source_chosen"] == [{"role": "assistant", "content": "b-0"}]
    assert row["chosen"] == [{"role": "assistant", "content": "tgt-1"}]
    assert row["rejected"] == [{"role": "assistant", "content": "tgt-2"}]
    assert (row["model"], row["target_model"]) == ("b", "tgt")
    assert (row["score_source_chosen"], row["score_chosen"], row["score_rejected"]) == (0.90, 0.70, 0.10)
    assert row["prompt"] == p["messages"]
    # The target's samples never reach the DPO set: the DPO pair is a's (in band), not tgt's (gap 0.6).
    assert only_dpo(r)["model"] == "a"
    assert r.stats["wrpo"] == {"instruction": 1}
    assert r.stats["wrpo_invalid"] == {"instruction": {"truncated": 1}}
    assert r.stats["invalid"] == {"instruction": {}}


def test_wrpo_drops_are_counted_by_side_and_sft_split_prompts_give_no_triplet():
    ps = [prompt(text=f"q{i}") for i in range(3)]
    resps = []
    resps += [
        resp(ps[0], "a", 0, 0.5),
        resp(ps[0], "tgt", 0, 0.4, text="same"),
        resp(ps[0], "tgt", 1, 0.4, text="same"),
    ]
    resps += [resp(ps[1], "a", 0, 0.5, finish="length"), resp(ps[1], "tgt", 0, 0.4), resp(ps[1], "tgt", 1, 0.2)]
    resps += [resp(ps[2], "a", 0, 0.5), resp(ps[2], "tgt", 0, 0.4)]
    r = build(ps, resps, sft_fraction=ALL_DPO, target_source="tgt")
    assert r.wrpo == []
    assert r.stats["wrpo_drops"]["instruction"] == {"target_tie": 1, "source_no_valid": 1, "target_no_pair": 1}
    # The same prompts in the SFT split: SFT rows, no WRPO attempt.
    r = build(ps, resps, sft_fraction=ALL_SFT, target_source="tgt")
    assert r.wrpo == [] and r.stats["wrpo_drops"]["instruction"] == {}
    assert {row["model"] for row in r.sft} == {"a"}  # never the target's own response


def test_wrpo_math_uses_correctness_on_both_sides():
    p = prompt("math")
    r = build(
        [p],
        [
            resp(p, "a", 0, 0.9, correct=False),
            resp(p, "a", 1, 0.2, correct=True),  # the best *correct* source response
            resp(p, "tgt", 0, 0.8, correct=False),
            resp(p, "tgt", 1, 0.1, correct=True),
            resp(p, "tgt", 2, 0.3, correct=False),
        ],
        sft_fraction=ALL_DPO,
        target_source="tgt",
    )
    row = r.wrpo[0]
    assert (row["source_chosen"][0]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"]) == (
        "a-1",
        "tgt-1",
        "tgt-2",
    )


def test_wrpo_missing_target_samples_or_zh_from_target_is_a_clear_error():
    p = prompt()
    with pytest.raises(ValueError, match="target's samples .*'tgt'.* missing"):
        build([p], [resp(p, "a", 0, 0.5)], target_source="tgt")
    z = prompt("zh", text="ni hao")
    with pytest.raises(ValueError, match="zh_source 'tgt' is the target's own samples"):
        build([z], [resp(z, "tgt", 0, 0.5)], target_source="tgt", zh_source="tgt")


# ---------------------------------------------------------------- properties over random worlds


def _random_world(seed: int) -> tuple[list[dict], list[tuple]]:
    rng = random.Random(seed)
    prompts, resps = [], []
    for i in range(60):
        domain = rng.choice(["instruction", "math", "code", "zh"])
        p = prompt(domain, text=f"{domain} {seed} {i}")
        prompts.append(p)
        for model in ("a", "b", "c", "tgt"):
            for idx in range(rng.randint(0, 4)):
                reward = rng.choice([None, float("nan")]) if rng.random() < 0.05 else round(rng.uniform(0, 0.2), 3)
                correct = None if domain in ("instruction", "zh") else rng.random() < 0.5
                text = rng.choice([None, "dup"])  # some identical texts make ties
                finish = "length" if rng.random() < 0.05 else "stop"
                resps.append(resp(p, model, idx, reward, correct, text=text, finish=finish))
    return prompts, resps


@pytest.mark.parametrize("seed", range(5))
def test_properties_of_the_built_sets(seed):
    prompts, resps = _random_world(seed)
    cfg = dict(
        sft_fraction={"instruction": 0.4, "math": 0.5, "code": 0.5},
        reward_gap=[0.01, 0.1],
        zh_source="a",
        target_source="tgt",
    )
    r = build(prompts, resps, **cfg)
    check_accounting(r.stats)
    assert r.sft and r.dpo and r.wrpo  # the world is rich enough for every set
    by_key = {schema.sample_key(s): (s, sc) for s, sc in resps}

    def keys(row: dict, side: str, model: str) -> list:
        text = row[side][0]["content"]
        return [k for k, (s, _) in by_key.items() if k[:2] == (row["prompt_id"], model) and s["text"] == text]

    for name, rows in (("dpo", r.dpo), ("wrpo", r.wrpo)):
        for row in rows:
            model = row["model"] if name == "dpo" else row["target_model"]
            chosen, rejected = keys(row, "chosen", model), keys(row, "rejected", model)
            # The pair comes from one model (never mixing sources), and DPO never uses the target's own samples.
            assert chosen and rejected, row
            assert name == "wrpo" or model != "tgt"
            if row["domain"] in ("math", "code"):
                # Correctness domains: the chosen passes, the rejected fails.
                assert any(by_key[k][1]["correct"] is True for k in chosen)
                assert any(by_key[k][1]["correct"] is False for k in rejected)
            if row["domain"] == "instruction" or name == "dpo":
                # Reward-ranked pairs (and every banded DPO pair): the chosen never scores below the rejected.
                assert row["score_chosen"] >= row["score_rejected"], row
            if name == "dpo":
                gap = row["score_chosen"] - row["score_rejected"]
                assert 0.01 - 1e-9 <= gap <= 0.1 + 1e-9
    for row in r.wrpo:
        assert row["target_model"] == "tgt" and row["model"] != "tgt"
        assert row["score_source_chosen"] is not None
    # A prompt gives an SFT row or a DPO/WRPO row, never both; zh only SFT, only from the designated source.
    sft_ids = {row["prompt_id"] for row in r.sft}
    assert not sft_ids & {row["prompt_id"] for row in r.dpo + r.wrpo}
    assert {row["model"] for row in r.sft if row["domain"] == "zh"} <= {"a"}
    assert "tgt" not in {row["model"] for row in r.sft}
    assert not any(row["domain"] == "zh" for row in r.dpo + r.wrpo)


def test_heldout_rows_leave_every_set_deterministically():
    prompts, resps = _random_world(7)
    cfg = dict(
        sft_fraction={"instruction": 0.4, "math": 0.5, "code": 0.5},
        reward_gap=[0.01, 0.1],
        zh_source="a",
        target_source="tgt",
    )
    full = build(prompts, resps, **cfg)
    held = build(prompts, resps, heldout_fraction=0.3, **cfg)
    assert held.heldout == build(prompts, resps, heldout_fraction=0.3, **cfg).heldout  # same rows every time
    for name in ("sft", "dpo", "wrpo"):
        kept, out, every = getattr(held, name), held.heldout[name], getattr(full, name)
        # Held-out rows are exactly the rows of the held-out prompts, and never also in training.
        assert sorted(r["prompt_id"] for r in kept + out) == sorted(r["prompt_id"] for r in every)
        assert not {r["prompt_id"] for r in kept} & {r["prompt_id"] for r in out}
        assert held.stats["heldout"][name] == len(out)
    assert sum(map(len, held.heldout.values())) > 0 and full.heldout == {}
    n = len(held.sft) + len(held.heldout["sft"])
    assert 0.1 < len(held.heldout["sft"]) / n < 0.5


def _split_world(seed: int) -> tuple[list[dict], list[tuple]]:
    """Many prompts of the three split domains, where the band and ties drop many DPO pairs."""
    rng = random.Random(seed)
    prompts, resps = [], []
    for i in range(240):
        domain = rng.choice(["instruction", "math", "code"])
        p = prompt(domain, text=f"split {domain} {seed} {i}")
        prompts.append(p)
        for model in ("a", "b"):
            for idx in range(rng.randint(0, 4)):
                correct = None if domain == "instruction" else rng.random() < 0.6
                text = rng.choice([None, None, None, "dup"])
                resps.append(resp(p, model, idx, round(rng.uniform(0.05, 0.17), 3), correct, text=text))
    return prompts, resps


@pytest.mark.parametrize("seed", range(4))
def test_after_rules_split_keeps_the_fraction_of_kept_rows(seed):
    prompts, resps = _split_world(seed)
    fractions = {"instruction": 0.4, "math": 0.7, "code": 0.5}
    cfg = dict(sft_fraction=fractions, reward_gap=[0.01, 0.1], reward_gap_per_domain={"code": None})
    # What each prompt can give, judged by the rules alone: every prompt to SFT, then every prompt to DPO.
    can_sft = {r["prompt_id"] for r in build(prompts, resps, **{**cfg, "sft_fraction": ALL_SFT}).sft}
    can_dpo = {r["prompt_id"] for r in build(prompts, resps, **{**cfg, "sft_fraction": ALL_DPO}).dpo}

    after = build(prompts, resps, split="after_rules", **cfg)
    check_accounting(after.stats)
    assert after.stats["split_mode"] == "after_rules"
    sft_ids, dpo_ids = {r["prompt_id"] for r in after.sft}, {r["prompt_id"] for r in after.dpo}
    # Every prompt that can give a row gives one, of a kind it can give.
    assert sft_ids | dpo_ids == can_sft | can_dpo and not sft_ids & dpo_ids
    assert sft_ids <= can_sft and dpo_ids <= can_dpo
    domain_of = {p["prompt_id"]: p["domain"] for p in prompts}
    for d, f in fractions.items():
        sft, dpo = after.stats["sft"][d], after.stats["dpo"][d]
        kept = sft + dpo
        only_sft = sum(1 for pid in can_sft - can_dpo if domain_of[pid] == d)
        both = sum(1 for pid in can_sft & can_dpo if domain_of[pid] == d)
        assert only_sft <= f * kept <= only_sft + both, (d, only_sft, both, kept)  # enough prompts give both
        assert abs(sft - f * kept) <= 1, (d, sft, kept)
        assert after.stats["kept_sft_share"][d] == round(sft / kept, 4)
    # Deterministic and independent of the input order.
    again = build(list(reversed(prompts)), list(reversed(resps)), split="after_rules", **cfg)
    assert again.sft == after.sft and again.dpo == after.dpo
    # A single-source control splits its prompts as the main build does.
    control = build(prompts, resps, only_source="a", split="after_rules", **cfg)
    assert {r["prompt_id"] for r in control.sft} <= sft_ids

    # before_rules (the default) is unchanged: a hash split of the prompts, whatever the rules keep.
    before = build(prompts, resps, **cfg)
    assert before.stats["split_mode"] == "before_rules"
    assert (before.sft, before.dpo) == (build(prompts, resps, split="before_rules", **cfg).sft, before.dpo)
    assert all(split_of(r["prompt_id"], r["domain"], BuildingSpec(**cfg)) == "sft" for r in before.sft)
    assert all(split_of(r["prompt_id"], r["domain"], BuildingSpec(**cfg)) == "dpo" for r in before.dpo)


def test_split_mode_is_checked():
    with pytest.raises(ValueError):
        BuildingSpec(split="after")
