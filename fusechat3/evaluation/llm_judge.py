"""An LLM judge for win rates: any OpenAI-compatible chat server (`vllm serve` of a judge model on the cluster, or
a provider's API), for users who have one. The default judge stays a reward model (`winrate.judge`).

Each prompt is judged twice, with the model's answer first as assistant A and then as assistant B, because LLM
judges favour one position (AlpacaEval and Arena-Hard swap the order for the same reason). A verdict is the last
`[[A]]`, `[[B]]` or `[[C]]` (a tie) in the judge's reply. The prompt's outcome is the mean of its two verdicts
(model better 1, tie 0.5, baseline better 0); a reply without a verdict counts as no verdict, and a prompt with
neither verdict is unjudged (counted in the win-rate table, not scored).

The requests go through the "openai" sampling backend (`fusechat3.sampling.openai`): its thread pool, its retries
with backoff, its one reachability check; greedy decoding.
"""

from __future__ import annotations

import re

from pydantic import Field

from fusechat3.config import Section

# Written for this project (not a copy of AlpacaEval's or Arena-Hard's templates): the pairwise format every
# instruction-tuned judge model follows, reasoning first and one bracketed verdict at the end.
SYSTEM = (
    "You are an impartial judge of two AI assistants' answers to the same user request. Decide which answer serves "
    "the user better: correct, helpful, relevant, and no longer than it needs to be. The order in which the answers "
    "appear must not influence you, nor their length on its own. Explain your reasoning briefly, then end with "
    "exactly one verdict: [[A]] if assistant A is better, [[B]] if assistant B is better, [[C]] if they are equally "
    "good."
)

_VERDICT = re.compile(r"\[\[([ABC])\]\]")


class LLMJudgeSpec(Section):
    """`eval.llm_judge`: the OpenAI-compatible server and model that judge win rates instead of the reward model."""

    model: str  # the model name the server serves (e.g. the --served-model-name of `vllm serve`)
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str | None = None  # name of the environment variable holding the API key; None: no key
    max_concurrency: int = Field(16, ge=1)  # requests in flight at once
    timeout_s: float = Field(600.0, gt=0)  # per request (and per retry)
    max_retries: int = Field(5, ge=0)  # on 408/409/429/5xx, timeouts and connection errors, with backoff
    max_tokens: int = Field(1024, ge=1)  # room for the judge's reasoning before its verdict


def judge_prompt(question: list[dict], first: str, second: str) -> list[dict]:
    """The judge's conversation: the user's request (its last user turn, with any earlier turns quoted) and the
    two answers as assistants A and B."""
    turns = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in question)
    user = (
        f"<|The Start of the Conversation|>\n{turns}\n<|The End of the Conversation|>\n\n"
        f"<|The Start of Assistant A's Answer|>\n{first}\n<|The End of Assistant A's Answer|>\n\n"
        f"<|The Start of Assistant B's Answer|>\n{second}\n<|The End of Assistant B's Answer|>"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def verdict(reply: str) -> str | None:
    """ "A", "B" or "C" (tie): the last bracketed verdict of a judge's reply; None if it gives none."""
    found = _VERDICT.findall(reply or "")
    return found[-1] if found else None


def outcome(model_first: str | None, model_second: str | None) -> float | None:
    """The model's score on one prompt from the two verdicts (the model's answer as A, then as B), in [0, 1]."""
    scores = []
    if model_first is not None:
        scores.append({"A": 1.0, "C": 0.5, "B": 0.0}[model_first])
    if model_second is not None:
        scores.append({"B": 1.0, "C": 0.5, "A": 0.0}[model_second])
    return sum(scores) / len(scores) if scores else None


def judge_pairs(spec: LLMJudgeSpec, prompts: list[dict], texts: list[str]) -> list[dict]:
    """Per prompt: {"outcome": the model's score against the prompt's baseline answer or None, "verdicts": the
    two verdicts, e.g. "A/B" (model first / model second; "-" where the reply had none)}."""
    from fusechat3.errors import UserError
    from fusechat3.sampling import GenParams, get_sampler
    from fusechat3.schema import prompt_meta

    conversations = []
    for p, text in zip(prompts, texts, strict=True):
        baseline = prompt_meta(p)["baseline"]
        conversations += [judge_prompt(p["messages"], text, baseline), judge_prompt(p["messages"], baseline, text)]
    try:
        sampler = get_sampler(
            "openai",
            spec.model,
            base_url=spec.base_url,
            api_key_env=spec.api_key_env,
            max_concurrency=spec.max_concurrency,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
        )
    except UserError as err:  # the server's check speaks of sources; say it is the judge's
        raise UserError(f"eval.llm_judge: {err}") from None
    try:
        params = GenParams(n=1, temperature=0.0, top_p=1.0, max_tokens=spec.max_tokens)
        replies = [
            out[0].text if out[0].finish_reason == "stop" else "" for out in sampler.generate(conversations, params)
        ]
    finally:
        sampler.close()
    rows = []
    for first, second in zip(replies[0::2], replies[1::2], strict=True):
        v1, v2 = verdict(first), verdict(second)
        rows.append({"outcome": outcome(v1, v2), "verdicts": f"{v1 or '-'}/{v2 or '-'}"})
    return rows
