"""The network: backbones, the multi-head classifier with its loss prediction module, losses, checkpoints."""
