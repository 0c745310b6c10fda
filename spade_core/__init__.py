"""SPADE as a pure library: tensors in, tensors out (diffusion, calibration, psg, eval); no paths, no params."""
