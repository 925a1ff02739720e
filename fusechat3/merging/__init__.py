"""Merging (FuseChat-1.0/2.0's last step, and MergeBench's data-free methods) on mergekit's engine.

- `methods`: VaRM, FuseChat's SCE and Consensus TA as mergekit merge methods (mergekit has the rest).
- `presets`: MergeBench's methods with its settings.
- `inputs`: the checks that the inputs can be merged (architectures, tensor shapes, vocabularies).
- `merge`: `fusechat3 merge <config.yaml>` (mergekit's config format, plus output_dir, preset, seed, options).
- `stage`: the `merge/<name>` stage of a run: the pairwise-fused targets merged as the recipe says.
"""
