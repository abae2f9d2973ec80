"""CIFAR-size models of the KD benchmark zoo (32x32 inputs); every module here registers models."""
