"""Training: the solver runner (Caffe's solvers and learning-rate policies, plus modern ones)."""
