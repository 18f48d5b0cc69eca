"""μP tooling and Ray Tune sweeps: coordinate check, sweeps, transfer, scaling-law fit."""
