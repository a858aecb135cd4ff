"""Images and data sets: safe image loading, examples and manifests, decoded pixels, transforms, imbalance."""
