"""Shipped controller checkpoints: ``<name>.safetensors`` files loadable by name.

``metaopt.list_pretrained()`` lists them and ``metaopt.load_optimizer(name, params)`` rebuilds the
runtime optimizer from one; files are written by ``metaopt.checkpoint.save_checkpoint`` (the
meta-training script exports there). The directory holds no checkpoint until one is trained.
"""
