"""Video data: decoding, caches, sampling plans and datasets."""
