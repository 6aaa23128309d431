"""Shared test setup: one torch thread, as on a one-core Binder session (and it is faster here)."""

import torch

torch.set_num_threads(1)
