"""ImageNet-size models (224x224 inputs); every module here registers models."""
