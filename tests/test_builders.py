"""The paper's eight prompt-source builders on fixtures in each dataset's real column layout
(tests/fixtures/datasets/<builder>/), the shared prompt steps (data_builders._steps), and the
prompts stage through the CLI: summary.json counts per spec and domain, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_builders import Built, as_built, collect, run_builder
from data_builders._steps import Decontaminator, dedup_key, heuristic, math_or_code, normalise, prepare, select
from data_builders.helpsteer2 import conversation
from fusechat3.errors import RowError
from fusechat3.recipe import BuilderSpec, RecipeError, load_recipe, parse_recipe
from fusechat3.run import Run
from fusechat3.schema import make_prompt, prompt_meta
from fusechat3.scoring.code import extract_code, run_tests_many

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def build(name: str, **args) -> Built:
    return as_built(run_builder(name, {"path": fixture(name), **args}))


def fixture_lines(name: str) -> list[str]:
    return (Path(fixture(name)) / "train.jsonl").read_text().splitlines()


def texts(built: Built) -> list[str]:
    return [r["messages"][-1]["content"] for r in built.rows]


# --------------------------------------------------------------------------- each builder on its fixture


@pytest.mark.parametrize(
    ("name", "domain", "rows", "source", "category"),
    [
        ("ultrafeedback", "instruction", 10, "openbmb/UltraFeedback", None),
        ("magpie_pro_dpo", "instruction", 7, "Magpie-Align/Magpie-Pro-DPO-100K-v0.1", "Information seeking"),
        ("helpsteer2", "instruction", 4, "nvidia/HelpSteer2", None),
        ("openmathinstruct2", "math", 4, "nvidia/OpenMathInstruct-2", None),
        ("alpaca_gpt4_zh", "zh", 6, "llamafactory/alpaca_gpt4_zh", None),
        ("magpie_qwen2_zh", "zh", 6, "Magpie-Align/Magpie-Qwen2-Pro-200K-Chinese", "Information seeking"),
    ],
)
def test_builder_rows(name: str, domain: str, rows: int, source: str, category: str | None) -> None:
    built = build(name)
    assert len(built.rows) == rows and built.skipped == {}
    assert {r["domain"] for r in built.rows} == {domain}
    # Read from a local copy, the prompt is still that dataset's: the same prompt_id as from the Hub.
    assert {r["source_dataset"] for r in built.rows} == {source}
    meta = prompt_meta(built.rows[0])
    assert meta["row"] == 0 and meta.get("category") == category
    assert built.rows == build(name).rows  # deterministic


def test_ultrafeedback_keeps_its_source_column() -> None:
    built = build("ultrafeedback")
    assert [prompt_meta(r)["source"] for r in built.rows[:3]] == ["evol_instruct", "sharegpt", "evol_instruct"]


def test_helpsteer2_two_responses_make_one_prompt_and_turns_become_messages() -> None:
    built = build("helpsteer2")
    assert [prompt_meta(r)["row"] for r in built.rows] == [0, 2, 4, 6]  # 8 rows, 2 per prompt
    multi = built.rows[2]["messages"]
    assert [m["role"] for m in multi] == ["user", "assistant", "user"]
    assert multi[0]["content"] == "I'm planning a trip to Japan in April."
    assert multi[2]["content"] == "Which cities should I visit in one week?"
    assert conversation("Hi\n<extra_id_1>Assistant\nHello!") is None  # ends with the assistant
    assert conversation("a\n<extra_id_1>User\nb") is None  # two user turns in a row


def test_helpsteer2_malformed_turns_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "hs.jsonl"
    rows = [
        {"prompt": "Hi\n<extra_id_1>Assistant\nHello!", "response": "x"},
        {"prompt": "Name a fruit.", "response": "y"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    built = as_built(run_builder("helpsteer2", {"path": str(path)}))
    assert texts(built) == ["Name a fruit."] and built.skipped == {"malformed_turns": 1}


def test_openmathinstruct2_one_prompt_per_problem_gold_as_is_and_source_filter(tmp_path: Path) -> None:
    built = build("openmathinstruct2")
    assert [r["gold"] for r in built.rows] == ["18", "\\frac{1}{4}", "2\\sqrt{2}", "42"]
    assert [prompt_meta(r)["problem_source"] for r in built.rows] == [
        "gsm8k",
        "math",
        "augmented_math",
        "augmented_gsm8k",
    ]
    only = build("openmathinstruct2", problem_sources=["gsm8k", "math"])
    assert [r["gold"] for r in only.rows] == ["18", "\\frac{1}{4}"]
    assert only.skipped == {"problem_source_not_selected": 2}  # problems, not rows (3 rows)
    assert len(build("openmathinstruct2", limit=2).rows) == 2  # limit counts problems
    with pytest.raises(ValueError, match="problem_sources must be a list"):
        build("openmathinstruct2", problem_sources="gsm8k")
    # with_response: the first solution of each problem is its reference response (explicit fusion's text)
    first = [json.loads(line) for line in fixture_lines("openmathinstruct2")]
    firsts = {}
    for row in first:
        firsts.setdefault(row["problem"], row["generated_solution"])
    with_text = build("openmathinstruct2", with_response=True)
    assert [prompt_meta(r)["response"] for r in with_text.rows] == [firsts[t] for t in texts(with_text)]
    assert "response" not in prompt_meta(built.rows[0])
    path = tmp_path / "omi.jsonl"
    rows = [{"problem": "What is 2+2?", "generated_solution": "4", "expected_answer": "", "problem_source": "math"}]
    path.write_text(json.dumps(rows[0]) + "\n")
    assert as_built(run_builder("openmathinstruct2", {"path": str(path)})).skipped == {"no_gold": 1}


def test_leetcode_tests_pass_the_reference_and_fail_a_wrong_solution() -> None:
    built = build("leetcode")
    assert built.skipped == {"no_tests": 1}  # Min Stack: a design problem, its examples give no test
    two_sum, palindrome = built.rows
    assert {r["domain"] for r in built.rows} == {"code"}
    assert two_sum["messages"][0]["content"].startswith("Two Sum\n\nGiven an array of integers")
    assert two_sum["messages"][0]["content"].endswith("as a function `twoSum(nums, target)`.")
    assert two_sum["tests"] == ["assert twoSum([2, 7, 11, 15], 9) == [0, 1]", "assert twoSum([3, 2, 4], 6) == [1, 2]"]
    assert len(palindrome["tests"]) == 3 and prompt_meta(palindrome)["slug"] == "palindrome-number"
    source = {json.loads(line)["id"]: json.loads(line) for line in (FIXTURES / "leetcode" / "train.jsonl").open()}
    wrong = "def twoSum(nums, target):\n    return [0, 1]\n"
    results = run_tests_many(
        [
            (extract_code(source[1]["python"]), two_sum["tests"]),
            (extract_code(source[9]["python"]), palindrome["tests"]),
            (wrong, two_sum["tests"]),
        ],
        timeout_s=5.0,
    )
    assert results == [(True, "passed"), (True, "passed"), (False, "test_failed")]


def test_self_oss_instruct_tests_from_the_response() -> None:
    built = build("self_oss_instruct")
    assert built.skipped == {"no_tests": 1}  # the flatten row: its response has no assert
    assert [prompt_meta(r)["id"] for r in built.rows] == [1000, 1002]
    assert built.rows[1]["tests"][-1].startswith("for word, n in")  # a loop of asserts is one test
    source = [json.loads(line) for line in (FIXTURES / "self_oss_instruct" / "train.jsonl").open()]
    jobs = [(extract_code(source[k]["response"]), r["tests"]) for k, r in zip((0, 2), built.rows, strict=True)]
    assert run_tests_many(jobs, timeout_s=5.0) == [(True, "passed"), (True, "passed")]


def test_alpaca_input_follows_the_instruction() -> None:
    prompts = texts(build("alpaca_gpt4_zh"))
    assert prompts[0] == "保持健康的三个提示。"  # no input
    assert prompts[1] == "将下面的句子翻译成英文。\n\n今天天气很好，我们去公园散步吧。"


def test_collect_normalises_results_and_counts_repeated_prompt_ids() -> None:
    spec = BuilderSpec(builder="toyworld", args={"split": "eval", "per_domain": 3})
    first, again = collect([spec, spec], "test")  # toyworld returns a plain list
    assert len(first.rows) == 12 and first.skipped == {}
    assert again.rows == [] and again.skipped == {"duplicate_prompt": 12}
    with pytest.raises(TypeError, match="not a list of rows or a Built"):
        as_built({"rows": []})


def test_missing_column_is_one_line_naming_expected_and_found_columns(tmp_path: Path) -> None:
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps({"prompt": "Hello?", "source": "sharegpt"}) + "\n")
    recipe = _recipe(tmp_path, [{"builder": "ultrafeedback", "args": {"path": str(path)}}])
    proc = _cli("prompts", str(recipe))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fusechat3: error:")]
    assert len(lines) == 1
    assert f"ultrafeedback builder: {path}: no column(s) ['instruction'] (found: ['prompt', 'source'])" in lines[0]
    assert "it reads ['instruction', 'source']" in lines[0]


# --------------------------------------------------------------------------- the shared steps


def _prompt(text: str, domain: str = "instruction", category: str | None = None, source: str = "s") -> dict:
    meta = {} if category is None else {"category": category}
    return make_prompt(domain=domain, source_dataset=source, messages=[{"role": "user", "content": text}], meta=meta)


def _specs(n: int, **fields) -> list[BuilderSpec]:
    return [BuilderSpec(builder=f"b{i}", **fields) for i in range(n)]


def test_normalise_and_dedup_across_and_within_specs() -> None:
    assert normalise("  ＨＥＬＬＯ,\tWorld!! ") == "hello, world"
    assert normalise("«Quoi ?»") == "quoi"
    a = [_prompt("What is a Roth IRA?"), _prompt("what is a  roth ira"), _prompt("Tell me a joke.")]
    b = [_prompt("WHAT IS A ROTH IRA?!", source="other"), _prompt("Tell me a story.", source="other")]
    rows, report = prepare(_specs(2), [Built(a), Built(b, {"empty_prompt": 1})], seed=0)
    assert [r["messages"][0]["content"] for r in rows] == ["What is a Roth IRA?", "Tell me a joke.", "Tell me a story."]
    first, second = report["specs"]
    assert first["skipped"]["duplicate_prompt"] == 1 and second["skipped"]["duplicate_prompt"] == 1
    assert second["skipped"]["empty_prompt"] == 1 and second["rows_in"] == 3 and second["rows_out"] == 1
    assert report["skipped"]["duplicate_prompt"] == 2 and report["by_domain"]["instruction"]["rows_out"] == 3
    # Conversations are compared message by message.
    assert dedup_key(_prompt("Hi.")) == dedup_key(_prompt("hi")) != dedup_key(_prompt("hi there"))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Can you write a C++ program that prompts the user for a number?", "code_prompt"),
        ("Fix this:\n```js\nconsole.log(x)\n```", "code_prompt"),
        ("def add(a, b): return a - b  # why is this wrong?", "code_prompt"),
        ("#include <stdio.h> does not compile", "code_prompt"),
        ("Write a SQL query that returns the top 5 customers.", "code_prompt"),
        ("用Python编写一个函数，计算列表的和。", "code_prompt"),
        ("Solve for x: 2x + 7 = 19.", "math_prompt"),
        ("Evaluate $\\int_0^1 x^2 dx$.", "math_prompt"),
        ("Simplify \\frac{6}{8}.", "math_prompt"),
        ("What is 12 * 7?", "math_prompt"),
        ("计算 25 乘以 4 等于多少。", "math_prompt"),
        ("Write a script for a short play about two friends.", None),
        ("Write a program for the wedding ceremony.", None),
        ("Create a class schedule for my students.", None),
        ("Write a code of conduct for our club.", None),
        ("How do I learn Python?", None),
        ("Hana shares 30 coins among 5 friends. How many coins does each get?", None),
        ("描述一下计算机的发展历史。", None),
    ],
)
def test_math_code_heuristic(text: str, why: str | None) -> None:
    assert heuristic(text) == why


def test_math_code_removal_by_category_then_heuristic_with_counts() -> None:
    # The source's category wins over the heuristic: an "Editing" prompt with a code block stays.
    assert math_or_code(_prompt("Proofread:\n```\ntext\n```", category="Editing")) is None
    assert math_or_code(_prompt("How are light years measured?", category="Math")) == "math_prompt"
    assert math_or_code(_prompt("Any prompt", category="Coding & Debugging")) == "code_prompt"
    names = ["magpie_pro_dpo", "ultrafeedback", "magpie_qwen2_zh"]
    specs = [BuilderSpec(builder=name, args={"path": fixture(name)}) for name in names]
    built = collect(specs, "test")
    rows, report = prepare(specs, built, seed=0)
    magpie, uf, zh = (rep["skipped"] for rep in report["specs"])
    assert (magpie["math_prompt"], magpie["code_prompt"]) == (1, 1)  # by task_category
    assert (uf["math_prompt"], uf["code_prompt"], uf["duplicate_prompt"]) == (2, 1, 1)  # by the heuristic
    assert (zh["math_prompt"], zh["code_prompt"], zh["duplicate_prompt"]) == (1, 1, 1)
    assert "光年是如何计算的？它表示时间还是距离？" in [r["messages"][0]["content"] for r in rows]  # category wins
    assert report["by_domain"]["zh"]["skipped"] == {"math_prompt": 1, "code_prompt": 1, "duplicate_prompt": 1}
    # keep_math_code: true keeps them.
    specs[1].keep_math_code = True
    _, report = prepare(specs, built, seed=0)
    assert report["specs"][1]["skipped"]["math_prompt"] == report["specs"][1]["skipped"]["code_prompt"] == 0
    # Math and code domains are never filtered.
    assert prepare(_specs(1), [Built([_prompt("Solve for x: x + 1 = 2", domain="zz")])], seed=0)[1]["rows_out"] == 1


def test_decontamination_by_word_ngrams() -> None:
    bench = [
        _prompt("Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."),
        _prompt("Name three primary colors."),
    ]
    clean = Decontaminator(bench, ngram=8)
    hit = _prompt("Story time: natalia SOLD clips to 48 of her friends in April; and then she went home.")
    assert clean.contaminated(hit)  # shares "natalia sold clips to 48 of her friends" (8 words)
    assert not clean.contaminated(_prompt("Natalia sold clips to her friends in the summer and in April."))
    assert clean.contaminated(_prompt("name three PRIMARY colors!"))  # shorter than n: whole sequence
    assert not clean.contaminated(_prompt("Name three primary colors of light and explain why they mix."))
    assert Decontaminator([_prompt("中国的首都是哪里")], ngram=4).contaminated(
        _prompt("请问中国的首都在哪")
    )  # CJK chars
    rows, report = prepare(_specs(1), [Built([hit, _prompt("Tell me a joke.")])], seed=0, benchmark=bench, ngram=8)
    assert len(rows) == 1 and report["specs"][0]["skipped"]["contaminated"] == 1


def test_limit_and_fraction_are_deterministic_subsets() -> None:
    rows = [_prompt(f"Question number {k}?") for k in range(40)]
    half = select(rows, fraction=0.5, seed=1)
    assert len(half) == 20 and half == select(rows, fraction=0.5, seed=1)
    assert half != select(rows, fraction=0.5, seed=2)
    assert [rows.index(r) for r in half] == sorted(rows.index(r) for r in half)  # original order
    ids = {r["prompt_id"] for r in half}
    assert {r["prompt_id"] for r in select(rows, fraction=0.25, seed=1)} <= ids  # a smaller fraction: a subset
    assert {r["prompt_id"] for r in select(rows, fraction=0.5, limit=7, seed=1)} < ids
    assert select(rows, limit=100, seed=1) == rows
    _, report = prepare(_specs(1, limit=5, fraction=0.5), [Built(rows)], seed=1)
    assert report["specs"][0]["rows_out"] == 5 and report["specs"][0]["skipped"]["over_limit"] == 35


def test_spec_fields_validated_and_hashed_into_the_prompts_key(tmp_path: Path) -> None:
    base = json.loads(_recipe(tmp_path, [{"builder": "toyworld"}]).read_text())

    def key(**changes) -> str:
        raw = {**base, **changes}
        return Run(parse_recipe(raw, "r.yaml")).key("prompts")

    default = key()
    variants = [
        key(prompts=[{"builder": "toyworld", "keep_math_code": True}]),
        key(prompts=[{"builder": "toyworld", "limit": 10}]),
        key(prompts=[{"builder": "toyworld", "fraction": 0.5}]),
        key(decontamination={"prompts": [{"builder": "toyworld", "args": {"split": "eval"}}]}),
        key(decontamination={"prompts": [{"builder": "toyworld", "args": {"split": "eval"}}], "ngram": 8}),
        key(seed=1),
    ]
    assert len({default, *variants}) == len(variants) + 1
    for bad, where in [
        ({"prompts": [{"builder": "toyworld", "fraction": 0}]}, "prompts[0].fraction"),
        ({"prompts": [{"builder": "toyworld", "limit": 0}]}, "prompts[0].limit"),
        ({"decontamination": {"prompts": [{"builder": "toyworld"}], "ngram": 0}}, "decontamination.ngram"),
        ({"decontamination": {"prompts": []}}, "decontamination.prompts"),
    ]:
        with pytest.raises(RecipeError, match=re.escape(f"key '{where}'")):
            parse_recipe({**base, **bad}, "r.yaml")


# --------------------------------------------------------------------------- the prompts stage through the CLI


def _recipe(tmp: Path, prompts: list[dict], **extra) -> Path:
    recipe = {
        "name": "builders-test",
        "run_dir": str(tmp / "run"),
        "prompts": prompts,
        "sources": [{"name": "mm", "model": "toyworld:mistral-math"}],
        "scoring": {"reward_model": {"model": "toyworld:reward"}},
        "target": {"model": "toyworld:target"},
        **extra,
    }
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusechat3.cli", *args], capture_output=True, text=True, timeout=300)


def test_prompts_stage_with_several_builders_reports_counts(tmp_path: Path) -> None:
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"messages": [{"role": "user", "content": "Name the primary colors, please"}]}) + "\n")
    prompts = [
        {"builder": "ultrafeedback", "args": {"path": fixture("ultrafeedback")}},
        {"builder": "helpsteer2", "args": {"path": fixture("helpsteer2")}},
        {"builder": "openmathinstruct2", "args": {"path": fixture("openmathinstruct2")}, "limit": 3},
        {"builder": "self_oss_instruct", "args": {"path": fixture("self_oss_instruct")}},
        {"builder": "alpaca_gpt4_zh", "args": {"path": fixture("alpaca_gpt4_zh")}, "keep_math_code": True},
    ]
    decontamination = {"prompts": [{"builder": "chat", "args": {"path": str(bench)}}], "ngram": 5}
    recipe = _recipe(tmp_path, prompts, decontamination=decontamination)
    proc = _cli("prompts", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "prompts" / "summary.json").read_text())
    uf, hs, omi, oss, zh = summary["specs"]

    def nonzero(skipped: dict) -> dict:
        return {why: n for why, n in skipped.items() if n}

    assert (uf["spec"], uf["builder"], uf["rows_in"], uf["rows_out"]) == ("prompts[0]", "ultrafeedback", 10, 6)
    assert nonzero(uf["skipped"]) == {"math_prompt": 2, "code_prompt": 1, "duplicate_prompt": 1}
    # HelpSteer2: "c#" is kept, the palindrome function is code, its quantum prompt is UltraFeedback's.
    assert hs["rows_out"] == 2 and nonzero(hs["skipped"]) == {"code_prompt": 1, "duplicate_prompt": 1}
    assert omi["rows_out"] == 3 and nonzero(omi["skipped"]) == {"over_limit": 1} and omi["domains"] == {"math": 3}
    assert oss["rows_out"] == 2 and nonzero(oss["skipped"]) == {"no_tests": 1}
    assert zh["rows_out"] == 6 and nonzero(zh["skipped"]) == {}  # keep_math_code: true
    assert summary["rows_out"] == 19 and summary["domains"] == {"instruction": 8, "math": 3, "code": 2, "zh": 6}
    assert summary["by_domain"]["instruction"] == {
        "rows_out": 8,
        "skipped": {"math_prompt": 2, "code_prompt": 2, "duplicate_prompt": 2},
    }
    assert nonzero(summary["skipped"]) == {
        "math_prompt": 2,
        "code_prompt": 2,
        "duplicate_prompt": 2,
        "over_limit": 1,
        "no_tests": 1,
    }
    assert "prompts[0] ultrafeedback: skipped math_prompt" in proc.stdout
    rows = Run(load_recipe(recipe)).read("prompts")
    assert len(rows) == 19 and len({r["prompt_id"] for r in rows}) == 19

    # A benchmark prompt sharing 5 words with the quantum prompt: both copies are now contaminated. The
    # edited benchmark file changes the stage's key, so the stage is rebuilt.
    bench.write_text(json.dumps({"messages": [{"role": "user", "content": "Explain quantum entanglement to a kid"}]}))
    assert _cli("prompts", str(recipe)).returncode == 0
    summary = json.loads((tmp_path / "run" / "prompts" / "summary.json").read_text())
    uf, hs = summary["specs"][:2]
    assert uf["skipped"]["contaminated"] == hs["skipped"]["contaminated"] == 1
    assert hs["skipped"]["duplicate_prompt"] == 0 and summary["rows_out"] == 18


def test_chat_builder_with_response_keeps_the_answer_as_the_reference(tmp_path):
    from data_builders.chat import build as chat

    path = tmp_path / "corpus.jsonl"
    convs = [
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    ]
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    rows = chat(str(path), with_response=True)
    assert [r["messages"] for r in rows] == [c[:1] for c in convs]
    assert [prompt_meta(r)["response"] for r in rows] == ["4", "hello"]
    path.write_text(json.dumps({"messages": convs[0][:1]}) + "\n")
    with pytest.raises(RowError, match="row 0.*with_response needs a conversation that ends with the assistant"):
        chat(str(path), with_response=True)
