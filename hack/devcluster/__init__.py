"""Development tooling: a real local Kubernetes control plane with simulated accelerator nodes."""
