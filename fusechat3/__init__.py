"""fusechat3: knowledge fusion of LLMs (FuseChat-3.0 implicit fusion, WRPO, FuseLLM/FuseChat explicit fusion) on TRL and vLLM."""

__version__ = "0.1.0"
