"""Explicit fusion (FuseLLM, FuseChat-1.0/2.0): the sources' next-token distributions, aligned to
the target's tokenizer and vocabulary, fused and distilled into the target.

Components so far (docs/explicit.md): `tokens` (each tokenizer's pieces as the bytes of text they
stand for), `align` (which target tokens and which source tokens cover the same characters of a
text), `vocab` (the target id a source id stands for: exact, MinED, statistics), `fuse` (the
sources' distributions on the target's positions, MinCE/AvgCE, and the sparse fusion loss),
`represent` (a model's top-k log-probs and CE on a conversation), `teacher` (one conversation's
fused teacher across templates and tokenizers).
"""
