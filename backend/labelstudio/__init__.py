"""Everything that speaks Label Studio: the SDK client, its formats, exports, connecting, image URLs."""
