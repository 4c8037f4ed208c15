"""Flax models: the torchvision-compatible ResNet and the VCLR heads."""
