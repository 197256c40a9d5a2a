"""Reference model definitions in pure PyTorch (MobileNet, EfficientNet, ShuffleNet)."""
