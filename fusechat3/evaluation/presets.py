"""Sampling presets for evaluation: the settings of FuseEval, the FuseChat-3.0 authors' evaluation code
(github.com/fanqiwan/FuseAI, FuseChat-3.0/FuseEval), per target family, so that a fused model can be evaluated the
way the paper's numbers were made. `eval.preset: fuseeval-llama3` puts them under `eval.sampling_per_benchmark`
(whose own keys still win), by benchmark column:

- math (its Math-Eval, from Qwen2.5-Math's harness: `--temperature 0 --n_sampling 1 --top_p 1`,
  `max_tokens_per_call` 2048) and code (its EvalPlus script: `--greedy --n_samples 1`): greedy;
- AlpacaEval 2: the family's own sampling, up to 4,096 new tokens (its `configs/*-alpacaeval.yaml`);
- Arena-Hard: greedy, up to 4,096 new tokens (its `configs/*-arenahard.yaml`).

What the presets do not carry: FuseEval puts the math instruction ("Please reason step by step...") in a system turn
for Llama and Qwen, the `gsm8k` and `math500` builders in the user turn (`instruction`, a builder argument).
"""

from __future__ import annotations

from typing import Any

_GREEDY = {"temperature": 0.0, "top_p": 1.0}
_MATH = {**_GREEDY, "max_tokens": 2048}
_ARENA = {**_GREEDY, "max_tokens": 4096}
_COMMON: dict[str, dict[str, Any]] = {
    "gsm8k": _MATH,
    "math500": _MATH,
    "humaneval": _GREEDY,
    "humanevalplus": _GREEDY,
    "mbpp": _GREEDY,
    "mbppplus": _GREEDY,
    "arena_hard": _ARENA,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "fuseeval-llama3": {
        **_COMMON,
        "alpaca_eval": {
            "temperature": 0.6,
            "top_p": 0.9,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.1,
            "max_tokens": 4096,
        },
    },
    "fuseeval-qwen2.5": {
        **_COMMON,
        "alpaca_eval": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_tokens": 4096},
    },
    "fuseeval-gemma2": {**_COMMON, "alpaca_eval": {"temperature": 0.5, "top_p": 1.0, "max_tokens": 4096}},
}
