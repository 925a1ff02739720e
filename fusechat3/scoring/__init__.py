"""Scoring of sampled responses: the three judges of FuseChat-3.0's data rules.

- `fusechat3.scoring.reward`: `RewardModel`, any `...ForSequenceClassification` reward model (instruction data),
  with a backend registered by name: "transformers" (`reward_hf`, the default) or "vllm" (`reward_vllm`).
- `fusechat3.scoring.math`: `verify_math`, final-answer checking against a gold label with math-verify (math data).
- `fusechat3.scoring.code`: `extract_code` and `run_tests`, model-written programs run against assert tests in a
  sandboxed subprocess (code data).

Nothing heavy is imported here: each module imports torch / transformers / vLLM / math-verify inside its functions.
"""
