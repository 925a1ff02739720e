"""fusechat3: knowledge fusion of LLMs: FuseChat-3.0 implicit fusion (SFT, length-normalized DPO, WRPO) on vLLM and TRL."""

__version__ = "0.1.0"
