"""Using trained models: generation, perplexity, synthetic recall (MQAR), zero-shot tasks (lm-eval), and
the language-modelling comparison of architectures.

Where it sits: on top of models and train (checkpoints, tokenizers, corpora); the `deltanet generate` and
`deltanet eval ...` commands call into it.
"""
