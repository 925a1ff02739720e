"""GSM8K (`openai/gsm8k`, config `main`): grade-school math word problems, the benchmark's test split by default.

Columns: `question`, `answer` (the worked solution, ending `#### <number>`). The gold answer is the whole `answer`
cell: the math check reduces it to what follows its last `####` (thousands separators removed), as it grades the
response's last `\\boxed{}` (FuseEval's Qwen2.5-Math-style grading). A row without a `####` line is counted
`no_gold`. The prompt is the question with the instruction the FuseChat-3.0 evaluation gives math prompts
(`instruction`, a builder argument: reason step by step, put the final answer in `\\boxed{}`).
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, is_local, iter_rows, load, text

HUB_ID = "openai/gsm8k"
# Qwen2.5-Math's chain-of-thought prompt, as FuseEval asks for the final answer.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def with_instruction(problem: str, instruction: str) -> str:
    """The problem, then the instruction on its own line (none when `instruction` is empty)."""
    return f"{problem}\n{instruction}" if instruction else problem


def build(
    path: str = HUB_ID,
    split: str = "test",
    name: str | None = "main",
    limit: int | None = None,
    revision: str | None = None,
    instruction: str = MATH_INSTRUCTION,
) -> Built:
    # A config name is the Hub's; a local copy is the config's own folder or file (`main/test.jsonl`).
    ds = load(
        "gsm8k", path, ["question", "answer"], split=split, name=None if is_local(path) else name, revision=revision
    )
    out = PromptSet("gsm8k", path, HUB_ID, "math", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        question, answer = text(row["question"]), text(row["answer"])
        if "####" not in answer:
            out.skip("no_gold", question)
            continue
        out.add(i, with_instruction(question, instruction), gold=answer, meta={"benchmark": "gsm8k"})
    return out.built
