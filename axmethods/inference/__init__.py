"""Inference with steering dictionaries: latent (detection) scores and steered generations.

`latent` scores every concept of one or more dictionaries in a single forward pass stopped at the read
layer; `steering` samples steered generations for (concept, prompt, factor) rows in heterogeneous,
per-row-seeded, resumable batches.
"""
