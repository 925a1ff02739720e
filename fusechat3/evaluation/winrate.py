"""Win rate against a baseline's answers, judged by a reward model: the instruction-following benchmarks
(AlpacaEval, Arena-Hard) without a paid LLM judge.

For each prompt the judge scores the model's answer and the baseline's answer (the same prompt, the same reward
model: ArmoRM by default in a real recipe, any sequence-classification reward model by name). The model wins
the prompt (1) when its reward is higher, loses (0) when lower, and a tie counts one half.

- `win_rate`: the mean over prompts, in percent;
- `ci_low` / `ci_high`: a 95% percentile bootstrap interval (prompts resampled with replacement, 2,000 times,
  seeded), the way AlpacaEval reports its standard error by resampling;
- `lc_win_rate`: a length-controlled win rate in the spirit of AlpacaEval 2's: a logistic regression of the
  outcome on an intercept and `tanh(length difference / its standard deviation)` (lengths in characters, the
  model's minus the baseline's); the length-controlled win rate is the regression's prediction at a length
  difference of zero, sigmoid(intercept). AlpacaEval 2 fits the same length term in a GLM that also has an
  instruction-difficulty term, with an LLM judge; this has the length term only. A reward model that likes long
  answers then cannot make a verbose model look better than it is. The fit is scipy's (L-BFGS on the log-loss with
  ties as one half, a small L2 penalty so that a clean sweep stays finite).
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP = 2000
_L2 = 1e-3


def outcomes(model_rewards: list[float], baseline_rewards: list[float]) -> np.ndarray:
    """1 / 0.5 / 0 per prompt: the model's answer scored above / equal to / below the baseline's."""
    m, b = np.asarray(model_rewards, dtype=float), np.asarray(baseline_rewards, dtype=float)
    if m.shape != b.shape:
        raise ValueError(f"{m.size} model rewards against {b.size} baseline rewards")
    return np.where(m > b, 1.0, np.where(m < b, 0.0, 0.5))


def length_controlled(outcome: np.ndarray, length_diff: np.ndarray) -> float:
    """sigmoid(intercept) of the logistic regression of `outcome` on [1, tanh(length_diff / sd)], in [0, 1]."""
    from scipy.optimize import minimize

    sd = float(np.std(length_diff))
    x = np.tanh(length_diff / sd) if sd > 0 else np.zeros_like(length_diff, dtype=float)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] + theta[1] * x
        # log(1 + e^z) without overflow; d/dz of the log-loss is sigmoid(z) - y.
        nll = np.sum(np.logaddexp(0.0, z) - outcome * z) / len(z) + _L2 * float(theta @ theta)
        g = 1.0 / (1.0 + np.exp(-z)) - outcome
        grad = np.array([g.mean(), (g * x).mean()]) + 2 * _L2 * theta
        return nll, grad

    fit = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B")
    return 1.0 / (1.0 + math.exp(-float(fit.x[0])))


def win_rate(
    model_rewards: list[float],
    baseline_rewards: list[float],
    model_lengths: list[int],
    baseline_lengths: list[int],
    *,
    seed: int = 0,
    bootstrap: int = BOOTSTRAP,
) -> dict[str, float | int]:
    """The win rate of a model against a baseline over the same prompts (see the module docstring), in percent."""
    return win_rate_of(
        outcomes(model_rewards, baseline_rewards), model_lengths, baseline_lengths, seed=seed, bootstrap=bootstrap
    )


def win_rate_of(
    outcome: list[float] | np.ndarray,
    model_lengths: list[int],
    baseline_lengths: list[int],
    *,
    seed: int = 0,
    bootstrap: int = BOOTSTRAP,
) -> dict[str, float | int]:
    """`win_rate` from the per-prompt outcomes in [0, 1] (a reward model's 1 / 0.5 / 0, or an LLM judge's mean of
    its two verdicts, `llm_judge`); wins, ties and losses count outcomes above, at and below one half."""
    outcome = np.asarray(outcome, dtype=float)
    n = int(outcome.size)
    if n == 0:
        raise ValueError("no prompts to compare")
    rng = np.random.default_rng(seed)
    means = outcome[rng.integers(0, n, size=(bootstrap, n))].mean(axis=1)
    diff = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    return {
        "win_rate": round(100 * float(outcome.mean()), 2),
        "ci_low": round(100 * float(np.percentile(means, 2.5)), 2),
        "ci_high": round(100 * float(np.percentile(means, 97.5)), 2),
        "lc_win_rate": round(100 * length_controlled(outcome, diff), 2),
        "n": n,
        "wins": int((outcome > 0.5).sum()),
        "ties": int((outcome == 0.5).sum()),
        "losses": int((outcome < 0.5).sum()),
    }


def judge(spec, prompts: list[dict], texts: list[str]) -> list[dict]:
    """Per prompt, the answer against the prompt's baseline answer: {"outcome": 1 / 0.5 / 0 or None, "reward",
    "baseline_reward"} from the reward model of `spec` (a `RewardSpec`; None where it gives no reward: a
    conversation over its max_length), or {"outcome", "verdicts"} from an LLM judge (an `LLMJudgeSpec`)."""
    from fusechat3.evaluation.llm_judge import LLMJudgeSpec, judge_pairs
    from fusechat3.schema import assistant, prompt_meta

    if isinstance(spec, LLMJudgeSpec):
        return judge_pairs(spec, prompts, texts)
    conversations = []
    for p, text in zip(prompts, texts, strict=True):
        baseline = prompt_meta(p)["baseline"]
        conversations += [p["messages"] + [assistant(text)], p["messages"] + [assistant(baseline)]]
    rm = spec.load()
    try:
        rewards = [reward for reward, _ in rm.score(conversations)]
    finally:
        rm.close()
    out = []
    for mine, theirs in zip(rewards[0::2], rewards[1::2], strict=True):
        known = mine is not None and theirs is not None
        out.append(
            {
                "outcome": float(outcomes([mine], [theirs])[0]) if known else None,
                "reward": mine,
                "baseline_reward": theirs,
            }
        )
    return out
