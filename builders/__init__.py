"""builders: plan layouts for a checkpoint on a hardware target and build engines for them."""
