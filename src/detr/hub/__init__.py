"""Weights: published checkpoints as data (:mod:`.pretrained`), cached downloads (:mod:`.download`),
safe reading and layout conversion (:mod:`.checkpoints`), and saving and rebuilding models
(:mod:`.serialization`). Import from the modules."""
