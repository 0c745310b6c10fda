"""The pipeline layer: parameters, artifact formats, datasets, the training engine and each stage's work."""
